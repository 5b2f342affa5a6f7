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
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ace_protocol.errors import ErrorCode, ProtocolError
from ace_protocol.messages import Cancelled, Done, Failed, Message, Queued, Result, Started

from bridge_server.config import ServerConfig
from bridge_server.engine.base import Engine, JobCancelled
from bridge_server.jobs import delivery, retention
from bridge_server.jobs.fairness import FairScheduler
from bridge_server.jobs.job import Job, JobState, StoredResult
from bridge_server.jobs.journal import Journal
from bridge_server.jobs.runner import make_one_image
from bridge_server.store.history import History

log = logging.getLogger(__name__)
Listener = Callable[[Job, Message], None]


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
    return (f"job {job.id[:8]} from {who} [{job.client_id[:12]}]: {job.task} {width}x{height}, {steps} steps, "
            f"{job.count} image(s), {seconds}: {outcome}")


class JobQueue:
    def __init__(self, config: ServerConfig, engine: Engine, history: History, journal: Journal) -> None:
        self.config = config
        self.engine = engine
        self.history = history
        self.journal = journal
        self.jobs: dict[str, Job] = {}
        self._waiting = FairScheduler()
        self.running: Job | None = None
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

    # ------------------------------------------------------------------ lifecycle

    def restore(self) -> None:
        """Replay the journal: unfinished jobs become `interrupted`; unacknowledged results wait for resume."""
        self.jobs.update(retention.restore_jobs(self.journal, self.history, self.config.clock(),
                                                self.config.retention_s))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.extra.get("warm_up") and hasattr(self.engine, "warm_up"):
            # Queued first on the engine thread: compile/kernels warm up before any job, never inside one.
            loop.run_in_executor(self._executor, self._warm_up)
        self._worker = loop.create_task(self._work(), name="ace-queue-worker")

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
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.close)
        self._executor.shutdown(wait=True)
        self.journal.close()

    # ------------------------------------------------------------------ client operations

    def queued_jobs(self) -> list[Job]:
        """Queued jobs in the order they will run."""
        return self._waiting.order()

    def submit(self, job: Job) -> int:
        queued = self._waiting.waiting()
        mine = self._waiting.waiting_for(job.client_id)
        if queued >= self.config.max_queued_total or mine >= self.config.max_queued_per_client:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"the queue is full ({mine} of your jobs, {queued} in all); wait for some to finish or cancel them",
            )
        self.journal.write({"ev": "accepted", "job_id": job.id, "job": job.journal_record()})
        self.jobs[job.id] = job
        self._waiting.add(job)
        self._renumber(exclude=job)
        self._wakeup.set()
        return job.position

    def cancel(self, job_id: str, client_id: str | None = None) -> bool:
        job = self.jobs.get(job_id)
        if job is None or (client_id is not None and job.client_id != client_id) or job.state.finished:
            return False
        if job.state is JobState.QUEUED:
            self._waiting.remove(job)
            self._finish(job, JobState.CANCELLED)
            self._emit(job, Cancelled(job_id=job.id))
            self._renumber()
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

    def deliverable(self, client_id: str) -> list[Job]:
        """This client's jobs to tell about on resume: unfinished ones and finished, unacknowledged ones."""
        self.purge()
        return sorted((j for j in self.jobs.values() if j.client_id == client_id), key=lambda j: j.created)

    def purge(self) -> None:
        """Forget unacknowledged results past retention (they stay in history)."""
        retention.purge_expired(self.jobs, self.config.clock(), self.config.retention_s)

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

    def _renumber(self, exclude: Job | None = None) -> None:
        ahead = 1 if self.running is not None else 0
        for index, job in enumerate(self.queued_jobs()):
            position = ahead + index
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
            job = self._waiting.take_next()
            if job is None:
                continue
            self._cancel_idle_unload()
            self.running = job
            job.state = JobState.RUNNING
            job.started = time.monotonic()
            job.position = 0
            self.journal.write({"ev": "started", "job_id": job.id})
            self._emit(job, Started(job_id=job.id))
            self._renumber()
            try:
                await self._run(job, loop)
            finally:
                self.running = None
                self._last_activity = time.monotonic()
                self._schedule_idle_unload(loop)
                self._renumber()

    async def _run(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for index in range(job.count):
                if job.cancel_event.is_set():
                    raise JobCancelled()
                job.image_index = index
                stored, rgba = await loop.run_in_executor(self._executor, self._make_one, job, index, loop)
                job.results.append(stored)
                self.journal.write({"ev": "result", "job_id": job.id, "index": index, "seed": stored.seed,
                                    "entry": stored.entry, "finished": stored.finished})
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
