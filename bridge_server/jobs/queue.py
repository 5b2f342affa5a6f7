"""The shared job queue: accepts, cancels and acknowledges jobs, and runs them one at a time on the engine thread.

Its collaborators each do one thing: `fairness` picks whose job runs next, `runner` makes one image on the engine
thread, `delivery` builds the messages a client gets (live and on resume), `retention` rebuilds jobs from the
journal and forgets old ones. One worker task feeds one engine thread; the event loop only ever awaits it. Every
state change goes to the journal first, then to listeners (sessions, panel).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ace_protocol.errors import ErrorCode, ProtocolError
from ace_protocol.messages import Cancelled, Done, Failed, Message, Queued, Result, Started
from ace_protocol.tasks import TASKS

from bridge_server.config import ServerConfig
from bridge_server.engine.base import Engine, JobCancelled
from bridge_server.jobs import delivery, retention
from bridge_server.jobs.fairness import FairScheduler
from bridge_server.jobs.job import Job, JobState, StoredResult
from bridge_server.jobs.journal import Journal
from bridge_server.jobs.pool import MAX_RESTARTS, RESTART_NOTE, InFlightPool, ReplicaLost, ReplicaPool
from bridge_server.jobs.runner import StepClock, engine_job_for, make_one_image, store_image
from bridge_server.store.history import History

log = logging.getLogger(__name__)
Listener = Callable[[Job, Message], None]


#: How long positions wait to be numbered after a cancel, start or end (see `JobQueue._renumber_soon`).
RENUMBER_AFTER_S = 0.05


def new_job_id() -> str:
    return secrets.token_hex(16)


def job_log_line(job: Job, state: JobState, error: tuple[str, str] | None) -> str:
    """One line per finished job for the daemon log: who, task, size, steps, seconds, outcome."""
    who = job.editor or "unknown client"
    image = job.inputs.image if job.inputs is not None else None
    height, width = image.shape[:2] if image is not None else (job.height, job.width)
    steps = job.params.get("steps", "?")
    seconds = f"{time.monotonic() - job.started:.1f} s" if job.started is not None else "never started"
    outcome = state.value if error is None else f"{state.value} ({error[0]}: {error[1][:120]})"
    return (
        f"job {job.id[:8]} from {who} [{job.client_id[:12]}]: {job.task} {width}x{height}, {steps} steps, "
        f"{job.count} image(s), {seconds}: {outcome}"
    )


class JobQueue:
    def __init__(self, config: ServerConfig, engine: Engine, history: History, journal: Journal) -> None:
        self.config = config
        self.engine = engine
        self.history = history
        self.journal = journal
        self.jobs: dict[str, Job] = {}
        self._waiting = FairScheduler()
        self._accepting: dict[str, Job] = {}  # journalled, waiting for the fsync before they are queued
        # Running jobs: at most one on the local engine thread; with engine replicas (serve --ray) one per replica.
        self._running: dict[str, Job] = {}
        self.pool: ReplicaPool | None = engine if isinstance(engine, ReplicaPool) else None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._stale: list[str] = []  # job ids the replicas' keeper holds that no restored job needs (restore)
        self._pool_watch: asyncio.Task[None] | None = None
        self.listeners: list[Listener] = []
        # client_id -> does its current connection want progress previews (the app wires the hub in); read on
        # the engine thread, so it must only read.
        self.wants_previews: Callable[[str], bool] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ace-engine")
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_activity = time.monotonic()
        self._idle_handle: asyncio.TimerHandle | None = None
        self.stats = {"done": 0, "failed": 0, "cancelled": 0}
        self._resultless = retention.KeptEndings(
            config.max_unacked_resultless_per_client, config.max_unacked_resultless_total
        )
        self._with_results = retention.KeptEndings(
            config.max_unacked_results_per_client, config.max_unacked_results_total
        )
        self._renumber_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    def restore(self) -> None:
        """Replay the journal: unfinished jobs become `interrupted`, except those the engine replicas still hold
        (serve --ray), which `start` attaches to; unacknowledged results wait for resume."""
        in_flight: dict[str, dict[str, Any]] = self.pool.in_flight() if isinstance(self.pool, InFlightPool) else {}
        restored = retention.restore_jobs(
            self.journal, self.history, self.config.clock(), self.config.retention_s, in_flight
        )
        self.jobs.update(restored)
        for job in sorted(restored.values(), key=lambda j: j.finished or 0.0):  # the caps hold across restarts
            if job.state.finished:
                self._note_ending(job)
        # Held by the replicas but over here (finished before the daemon died, or no longer journalled): let go.
        self._stale = [job_id for job_id in in_flight if job_id not in restored or restored[job_id].state.finished]
        for job in restored.values():
            if job.state is JobState.RUNNING:
                held = in_flight[job.id]
                found = held.get("ended") or "running"
                self.journal.write({"ev": "reattached", "job_id": job.id, "index": held.get("index"), "found": found})
                log.info("job %s was running on the replicas when the daemon stopped (%s): reattached", job.id, found)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.extra.get("warm_up") and hasattr(self.engine, "warm_up"):
            # Its own thread: the engine loads under its lock (a job waits for the weights), then compiles in the
            # background while jobs run uncompiled (engine/background_compile.py), never inside a job.
            threading.Thread(target=self._warm_up, name="ace-warm-up", daemon=True).start()
        self._worker = loop.create_task(self._work(), name="ace-queue-worker")
        for job in self.jobs.values():
            if job.state is JobState.RUNNING:  # taken back from the replicas after a restart (restore)
                job.started = time.monotonic()
                self._running[job.id] = job
                task = loop.create_task(self._run_job(job, loop), name=f"ace-job-{job.id[:8]}")
                self._job_tasks.add(task)
                task.add_done_callback(self._job_tasks.discard)
        if isinstance(self.pool, InFlightPool):
            for job_id in self._stale:
                task = loop.create_task(self.pool.release(job_id), name=f"ace-release-{job_id[:8]}")
                self._job_tasks.add(task)  # held, so it is not collected before it ran
                task.add_done_callback(self._job_tasks.discard)
        watch = getattr(self.pool, "watch", None)
        if watch is not None:
            self._pool_watch = loop.create_task(watch(self._capacity_changed), name="ace-replica-watch")

    def _warm_up(self) -> None:
        try:
            self.engine.warm_up()  # type: ignore[attr-defined]
        except Exception as exc:  # a warm-up problem (e.g. no weights yet) shows again, clearly, at the first job
            log.warning("warm-up skipped: %s", getattr(exc, "message", exc))

    async def stop(self) -> None:
        self._stopping = True
        for job in self.jobs.values():
            job.cancel_event.set()
        self.config.gate.resume()
        self._wakeup.set()
        for task in [self._worker, self._pool_watch, *self._job_tasks]:
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.close)
        self._executor.shutdown(wait=True)
        self.journal.close()

    # ------------------------------------------------------------------ client operations

    @property
    def running(self) -> Job | None:
        """The running job that started first (the only one without replicas)."""
        return next(iter(self._running.values()), None)

    def running_jobs(self) -> list[Job]:
        return list(self._running.values())

    def slots(self) -> int:
        """How many jobs run at once: one on the local engine thread, one per live replica with --ray."""
        return self.pool.capacity() if self.pool is not None else 1

    def _capacity_changed(self) -> None:
        self._renumber()
        self._wakeup.set()

    def waiting_input_bytes(self) -> int:
        """Bytes held by the inputs of jobs not yet running (counted for the memory budget; no order needed)."""
        waiting = [*self._waiting.jobs(), *self._accepting.values()]
        return sum(job.inputs.held_bytes for job in waiting if job.inputs is not None)

    def queued_jobs(self) -> list[Job]:
        """Queued jobs in the order they will run."""
        return self._waiting.order()

    def submit(self, job: Job) -> int:
        """Journal and queue `job` at once (the journal's fsync follows; see `accept` for the client path)."""
        self.accept(job)
        return self.enqueue(job)

    def accept(self, job: Job) -> None:
        """Admit `job` and write it to the journal; `enqueue` queues it once the journal says it is durable (the
        client's `accepted` waits for that fsync, which runs off the event loop, shared by concurrent submits)."""
        refusal = self.admit(job)
        if refusal:
            raise ProtocolError(ErrorCode.QUEUE_FULL, refusal)
        self.journal.write({"ev": "accepted", "job_id": job.id, "job": job.journal_record()})
        self._accepting[job.id] = job  # counted by `admit` until queued

    def enqueue(self, job: Job) -> int:
        self._accepting.pop(job.id, None)
        self.jobs[job.id] = job
        self._waiting.add(job)
        self._renumber(exclude=job)
        self._wakeup.set()
        return job.position

    def admit(self, job: Job) -> str | None:
        """Why `job` cannot be queued now, or None. Shares are by principal (the person behind a named token;
        another user's or a remote machine's connections together; else the connection that sends), not by the
        `client_id` a client picks. Nothing at all is queued past `max_queued_total`, however many connections
        send. Below three quarters of it anyone queues; above, a principal queues only while it holds fewer than
        total // (principals with jobs waiting, itself included, + 1): the principals already there can never
        hold it all, so one with no jobs still finds room."""
        # Counts only (the run order is not needed, and costs far more); jobs between `accept` and `enqueue` count.
        waiting = [*self._waiting.jobs(), *self._accepting.values()]
        total, cap = len(waiting), self.config.max_queued_total
        mine = sum(1 for j in waiting if j.client_id == job.client_id)
        if mine >= self.config.max_queued_per_client:
            return (
                f"the queue is full for you ({mine} jobs waiting, at most {self.config.max_queued_per_client} "
                "per client); wait for some to finish or cancel them"
            )
        if total < cap - cap // 4:
            return None
        held: dict[str, int] = {}
        for j in waiting:
            held[j.principal] = held.get(j.principal, 0) + 1
        share = max(1, cap // (len(held.keys() | {job.principal}) + 1))
        if total < cap and held.get(job.principal, 0) < share:
            return None
        return (
            f"the queue is full ({total} jobs waiting; the queue holds {cap}, and {share} per sender once it is "
            f"three quarters full; you have {held.get(job.principal, 0)}); wait for some to finish or cancel them"
        )

    def cancel(self, job_id: str, client_id: str | None = None) -> bool:
        job = self.jobs.get(job_id)
        if job is None or (client_id is not None and job.client_id != client_id) or job.state.finished:
            return False
        if job.state is JobState.QUEUED:
            self._waiting.remove(job)
            self._finish(job, JobState.CANCELLED)
            self._emit(job, Cancelled(job_id=job.id))
            self._renumber_soon()
            return True
        job.cancel_event.set()  # the engine stops at its next step
        return True

    def ack(self, client_id: str, job_ids: list[str]) -> None:
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.client_id != client_id or not job.state.finished:
                continue
            job.acked = True
            self.journal.write({"ev": "acked", "job_id": job_id})
            del self.jobs[job_id]
            self._kept(job).gone(job)

    def client_ids(self) -> set[str]:
        """The clients with a job here: waiting, running, or finished and not yet acknowledged."""
        return {job.client_id for job in self.jobs.values()}

    def deliverable(self, client_id: str) -> list[Job]:
        """This client's jobs to tell about on resume: unfinished ones and finished, unacknowledged ones."""
        self.purge()
        return sorted((j for j in self.jobs.values() if j.client_id == client_id), key=lambda j: j.created)

    def purge(self) -> None:
        """Forget unacknowledged results past retention (they stay in history)."""
        for job in retention.purge_expired(self.jobs, self.config.clock(), self.config.retention_s):
            self._kept(job).gone(job)

    def replay_messages(self, job: Job) -> list[Message]:
        return delivery.replay_messages(self.history, job)

    def result_message(self, job: Job, stored: StoredResult, rgba: Any = None) -> Result:
        return delivery.result_message(self.history, job, stored, rgba)

    # ------------------------------------------------------------------ events

    def _emit(self, job: Job, message: Message) -> None:
        for listener in list(self.listeners):
            try:
                listener(job, message)
            except Exception:  # one broken listener must not stop the queue
                log.exception("queue listener failed")

    def _renumber_soon(self) -> None:
        """Number positions after a cancel, a start or an end once for everything that happens in the next
        `RENUMBER_AFTER_S`: playing the order costs O(n log lanes), and a flood of cancels asked for it hundreds of
        times a second (a third of the event loop in `bench/hostile_load.py`, measured with py-spy), while clients
        are told positions at most every 250 ms anyway. A submit still numbers at once (its `accepted` needs it)."""
        if self._renumber_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._renumber()
            return
        self._renumber_handle = loop.call_later(RENUMBER_AFTER_S, self._renumber)

    def _renumber(self, exclude: Job | None = None) -> None:
        if self._renumber_handle is not None:  # this pass covers what it was waiting to number
            self._renumber_handle.cancel()
            self._renumber_handle = None
        # Position = rounds of work ahead: with one engine the jobs ahead (running one included); with N replicas
        # the first N waiting jobs start in the next round, the next N after that, and so on.
        busy, slots = len(self._running), max(1, self.slots())
        for index, job in enumerate(self.queued_jobs()):
            position = (busy + index) // slots
            if position != job.position or job is exclude:
                job.position = position
                if job is not exclude:
                    self._emit(job, Queued(job_id=job.id, position=position))

    def _finish(self, job: Job, state: JobState, error: tuple[str, str] | None = None) -> None:
        job.state = state
        job.error = error
        job.finished = self.config.clock()
        log.info("%s", job_log_line(job, state, error))
        job.inputs = None
        self.stats[state.value] = self.stats.get(state.value, 0) + 1
        if state is JobState.FAILED and error:
            self.journal.write({"ev": "failed", "job_id": job.id, "code": error[0], "message": error[1]})
        else:
            self.journal.write({"ev": state.value, "job_id": job.id})
        self._note_ending(job)

    def _kept(self, job: Job) -> retention.KeptEndings:
        return self._with_results if job.results else self._resultless

    def _note_ending(self, job: Job) -> None:
        """Forget the older unacknowledged endings this one pushes past the caps (retention.KeptEndings)."""
        for old_id in self._kept(job).ended(job):
            old = self.jobs.get(old_id)
            if old is None:  # acknowledged meanwhile
                continue
            if any(stored.rgba is not None for stored in old.results):
                continue  # its picture is only in memory (the disk refused it): kept until written and delivered
            del self.jobs[old_id]
            self.journal.write({"ev": "acked", "job_id": old_id})

    # ------------------------------------------------------------------ the worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        gate = self.config.gate
        while not self._stopping:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if gate.paused:
                await loop.run_in_executor(self._executor, gate.wait_until_running, self._is_stopping)
                continue
            if len(self._running) >= max(1, self.slots()):  # every replica busy: wait for one to finish
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job = self._waiting.take_next()
            if job is None:
                continue
            self._cancel_idle_unload()
            self._running[job.id] = job
            job.state = JobState.RUNNING
            job.started = time.monotonic()
            job.position = 0
            self.journal.write({"ev": "started", "job_id": job.id})
            self._emit(job, Started(job_id=job.id))
            self._renumber_soon()
            if self.pool is None:
                await self._run_job(job, loop)
            else:  # several at once, one per replica; the loop goes on to fill the next free one
                task = loop.create_task(self._run_job(job, loop), name=f"ace-job-{job.id[:8]}")
                self._job_tasks.add(task)
                task.add_done_callback(self._job_tasks.discard)

    async def _run_job(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self._run(job, loop)
            if isinstance(self.pool, InFlightPool):  # ended and stored: the replicas' keeper may forget it
                await self.pool.release(job.id)
        finally:
            self._running.pop(job.id, None)
            self._last_activity = time.monotonic()
            self._schedule_idle_unload(loop)
            self._renumber_soon()
            self._wakeup.set()

    async def _run(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for index in range(len(job.results), job.count):  # a reattached job goes on where it was
                if job.cancel_event.is_set():
                    raise JobCancelled()
                job.image_index = index
                if self.pool is None:
                    stored, rgba = await loop.run_in_executor(self._executor, self._make_one, job, index, loop)
                else:
                    stored, rgba = await self._make_one_remote(self.pool, job, index)
                job.results.append(stored)
                self.journal.write(
                    {
                        "ev": "result",
                        "job_id": job.id,
                        "index": index,
                        "seed": stored.seed,
                        "entry": stored.entry,
                        "finished": stored.finished,
                    }
                )
                self._emit(job, self.result_message(job, stored, rgba))
        except JobCancelled:
            self._finish(job, JobState.CANCELLED)
            self._emit(job, Cancelled(job_id=job.id))
            return
        except ProtocolError as exc:
            self._fail(job, exc.code.value, exc.message)
            return
        except Exception as exc:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self._fail(job, ErrorCode.INTERNAL.value, f"the engine failed: {type(exc).__name__}: {exc}"[:500])
            return
        self._finish(job, JobState.DONE)
        self._emit(job, Done(job_id=job.id))

    def _fail(self, job: Job, code: str, message: str) -> None:
        self._finish(job, JobState.FAILED, (code, message))
        self._emit(job, Failed(code=code, message=message, job_id=job.id))

    def _make_one(self, job: Job, index: int, loop: asyncio.AbstractEventLoop) -> tuple[StoredResult, Any]:
        """Engine thread: one image of `job`, its progress sent to the event loop."""

        def emit(job: Job, message: Message) -> None:
            loop.call_soon_threadsafe(self._emit, job, message)

        wants = self.wants_previews is not None and self.wants_previews(job.client_id)
        return make_one_image(self.config, self.engine, self.history, job, index, emit, wants)

    async def _make_one_remote(self, pool: ReplicaPool, job: Job, index: int) -> tuple[StoredResult, Any]:
        """One image on a replica. A replica that dies under it costs the image a restart on another replica (the
        journal marks it, the client sees `queued` with the note), never the job; results already sent stay sent."""
        spec = TASKS.get(job.task)
        piece = spec.model if spec is not None else ""
        while True:
            clock = StepClock(job, index)
            started = time.monotonic()
            wants = self.wants_previews is not None and self.wants_previews(job.client_id)

            def on_start(info: dict[str, Any]) -> None:
                job.replica = str(info.get("replica") or "")

            def on_step(step: int, total: int, preview: Any, clock: StepClock = clock) -> None:
                self._emit(job, clock.step(step, total, preview))

            try:
                image = await pool.make_image(
                    engine_job_for(job, index),
                    key=(job.id, index),
                    piece=piece,
                    wants_previews=wants,
                    is_cancelled=job.cancel_event.is_set,
                    on_start=on_start,
                    on_step=on_step,
                )
            except ReplicaLost as lost:
                pool.replica_lost(lost.replica, lost.reason)
                job.restarts += 1
                self.journal.write(
                    {
                        "ev": "restarted",
                        "job_id": job.id,
                        "index": index,
                        "replica": lost.replica,
                        "reason": lost.reason,
                        "restarts": job.restarts,
                    }
                )
                if job.restarts > MAX_RESTARTS:
                    raise ProtocolError(
                        ErrorCode.INTERNAL,
                        f"the job lost its engine replica {job.restarts} times "
                        f"(last: {lost.reason}); see `ace-bridge status`",
                    ) from lost
                log.warning(
                    "job %s: replica %s lost (%s); image %d restarts on another replica",
                    job.id[:8],
                    lost.replica or "?",
                    lost.reason,
                    index,
                )
                job.replica = ""
                job.step = 0
                self._emit(job, Queued(job_id=job.id, position=0, note=f"{RESTART_NOTE} ({lost.reason})"))
                continue
            replica = {k: v for k, v in image.replica.items() if v is not None}
            return await asyncio.to_thread(
                store_image,
                self.config,
                self.history,
                job,
                index,
                image.rgb,
                image.info,
                image.model,
                started,
                {"replica": replica},
            )

    def _is_stopping(self) -> bool:
        return self._stopping

    async def on_engine_thread(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine thread, after any job that is running now (the executor has one worker)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ------------------------------------------------------------------ idle unload

    def _schedule_idle_unload(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self.config.idle_unload_s
        if delay is None or self._waiting:
            return
        self._idle_handle = loop.call_later(delay, self._idle_unload, loop)

    def _cancel_idle_unload(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _idle_unload(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.running is None and not self._waiting and not self._stopping:
            loop.run_in_executor(self._executor, self.engine.unload)
