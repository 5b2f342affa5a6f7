"""The shared job queue: fair across clients, journalled, with results kept until delivered.

Scheduling: jobs of one client run in order; clients take turns by `client_id`: the client whose last turn is
longest ago goes next. Two editors that each submit five jobs are served alternately, and an editor that sends one
job at a time (each after the previous result) still gets every other turn. One worker task feeds one engine thread; the event loop only
ever awaits it. Every state change goes to the journal first, then to listeners (sessions, panel).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import secrets
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ace_protocol import __version__
from ace_protocol.errors import ErrorCode, ProtocolError
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Cancelled, Done, Failed, Message, Progress, Queued, Result, Started
from PIL import Image

from bridge_server.config import ServerConfig
from bridge_server.engine.base import Engine, EngineJob, JobCancelled
from bridge_server.imaging.compositing import make_result
from bridge_server.jobs.job import Job, JobState, StoredResult
from bridge_server.jobs.journal import Journal
from bridge_server.store.history import History, HistoryUnavailable

log = logging.getLogger(__name__)
Listener = Callable[[Job, Message], None]
PREVIEW_MAX_SIDE = 256
PREVIEW_JPEG_QUALITY = 70


def encode_preview(rgb: np.ndarray) -> ImagePayload:
    """A small JPEG payload (at most PREVIEW_MAX_SIDE px on the long side) of an engine preview."""
    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB")
    if max(img.size) > PREVIEW_MAX_SIDE:
        img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=PREVIEW_JPEG_QUALITY)
    return ImagePayload(img.width, img.height, "jpeg", buf.getvalue())


def new_job_id() -> str:
    return secrets.token_hex(16)


class JobQueue:
    def __init__(self, config: ServerConfig, engine: Engine, history: History, journal: Journal) -> None:
        self.config = config
        self.engine = engine
        self.history = history
        self.journal = journal
        self.jobs: dict[str, Job] = {}
        self._waiting: dict[str, deque[Job]] = {}  # client_id -> its queued jobs, in submit order
        # Fairness by turn, not by lane: when each client was last served, and a submit counter for ties, so an
        # editor that sends one job at a time (GIMP waits for each result) is not pushed behind one just served.
        self._served_at: dict[str, int] = {}
        self._serve_tick = 0
        self._arrival: dict[str, int] = {}
        self._arrivals = itertools.count()
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
        records = self.journal.replay()
        keep: dict[str, dict[str, Any]] = {}
        now = self.config.clock()
        for job_id, record in records.items():
            meta = record["job"]
            if record["acked"]:
                continue
            job = Job(
                id=job_id,
                client_id=meta["client_id"],
                task=meta["task"],
                prompt=meta.get("prompt", ""),
                params=meta.get("params", {}),
                seed=meta.get("seed", 0),
                created=meta.get("created", now),
                width=meta.get("width", 0),
                height=meta.get("height", 0),
                editor=meta.get("editor", ""),
                label=meta.get("label", ""),
            )
            for r in record["results"]:
                entry = r.get("entry")
                if isinstance(entry, str):
                    prov = (self.history.meta(entry) or {}).get("provenance", {})
                    job.results.append(StoredResult(r["index"], r["seed"], entry, prov, r.get("finished") or now))
            if record["state"] in ("queued", "running"):
                job.state = JobState.FAILED
                job.error = (ErrorCode.INTERRUPTED.value, "the daemon stopped while this job was queued or running; "
                             "submit it again")
                record["state"] = "failed"
                record["error"] = {"code": job.error[0], "message": job.error[1]}
            else:
                job.state = JobState(record["state"])
                if record["error"]:
                    job.error = (record["error"].get("code", "internal"), record["error"].get("message", ""))
            job.finished = job.results[-1].finished if job.results else now
            if now - job.finished > self.config.retention_s:
                continue
            self.jobs[job_id] = job
            keep[job_id] = record
        self.journal.open(keep)

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
        """Queued jobs in the order they will run: the client whose last turn is longest ago goes next (a client
        never served, or back after a pause, comes before those served since), in order within one client."""
        lanes = {client_id: list(lane) for client_id, lane in self._waiting.items()}
        served = dict(self._served_at)
        tick = self._serve_tick
        order: list[Job] = []
        while lanes:
            client_id = self._whose_turn(lanes, served)
            lane = lanes[client_id]
            order.append(lane.pop(0))
            tick += 1
            served[client_id] = tick
            if not lane:
                del lanes[client_id]
        return order

    def submit(self, job: Job) -> int:
        queued = sum(len(q) for q in self._waiting.values())
        mine = len(self._waiting.get(job.client_id, ()))
        if queued >= self.config.max_queued_total or mine >= self.config.max_queued_per_client:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"the queue is full ({mine} of your jobs, {queued} in all); wait for some to finish or cancel them",
            )
        self.journal.write({"ev": "accepted", "job_id": job.id, "job": job.journal_record()})
        self.jobs[job.id] = job
        self._arrival[job.id] = next(self._arrivals)
        self._waiting.setdefault(job.client_id, deque()).append(job)
        self._renumber(exclude=job)
        self._wakeup.set()
        return job.position

    def cancel(self, job_id: str, client_id: str | None = None) -> bool:
        job = self.jobs.get(job_id)
        if job is None or (client_id is not None and job.client_id != client_id) or job.state.finished:
            return False
        if job.state is JobState.QUEUED:
            lane = self._waiting.get(job.client_id)
            if lane is not None and job in lane:
                lane.remove(job)
                if not lane:
                    del self._waiting[job.client_id]
            self._arrival.pop(job.id, None)
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
        now = self.config.clock()
        for job_id, job in list(self.jobs.items()):
            if job.state.finished and job.finished is not None and now - job.finished > self.config.retention_s:
                del self.jobs[job_id]

    def replay_messages(self, job: Job) -> list[Message]:
        """The messages that tell a (re)connected client where one of its jobs stands."""
        if job.state is JobState.QUEUED:
            return [Queued(job_id=job.id, position=job.position)]
        if job.state is JobState.RUNNING:
            return [Started(job_id=job.id)]
        messages: list[Message] = []
        if job.state is JobState.DONE or job.results:
            for stored in job.results:
                try:
                    messages.append(self.result_message(job, stored))
                except HistoryUnavailable:
                    return [Failed(code=ErrorCode.INTERRUPTED.value, job_id=job.id,
                                   message="the result was lost: the history folder did not keep it")]
        if job.state is JobState.DONE:
            messages.append(Done(job_id=job.id))
        elif job.state is JobState.CANCELLED:
            messages.append(Cancelled(job_id=job.id))
        elif job.state is JobState.FAILED:
            code, text = job.error or (ErrorCode.INTERNAL.value, "failed")
            messages.append(Failed(code=code, message=text, job_id=job.id))
        return messages

    def result_message(self, job: Job, stored: StoredResult, rgba: Any = None) -> Result:
        if rgba is None:
            rgba = stored.rgba if stored.rgba is not None else self.history.load_image(stored.entry)
        height, width = rgba.shape[:2]
        return Result(
            job_id=job.id,
            index=stored.index,
            count=job.count,
            seed=stored.seed,
            # A view, not a copy: msgpack reads the pixels straight from the array when the frame is encoded.
            image=ImagePayload(width, height, "rgba8", memoryview(np.ascontiguousarray(rgba)).cast("B")),
            provenance=stored.provenance,
        )

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
        job.inputs = None
        self.stats[state.value] = self.stats.get(state.value, 0) + 1
        if state is JobState.FAILED and error:
            self.journal.write({"ev": "failed", "job_id": job.id, "code": error[0], "message": error[1]})
        else:
            self.journal.write({"ev": state.value, "job_id": job.id})

    # ------------------------------------------------------------------ the worker

    def _whose_turn(self, lanes: Mapping[str, Sequence[Job]], served: Mapping[str, int]) -> str:
        """The client whose turn it is: the one whose last turn is longest ago (never served first), ties broken by
        which waiting job arrived first. The worker asks it for the next job, `queued_jobs` to lay out the order."""
        return min(lanes, key=lambda c: (served.get(c, 0), self._arrival[lanes[c][0].id]))

    def _next_job(self) -> Job | None:
        if not self._waiting:
            return None
        lane = self._waiting[self._whose_turn(self._waiting, self._served_at)]
        job = lane[0]
        lane.popleft()
        if not lane:
            del self._waiting[job.client_id]
        self._serve_tick += 1
        self._served_at[job.client_id] = self._serve_tick
        self._arrival.pop(job.id, None)
        return job

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        gate = self.config.gate
        while not self._stopping:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if gate.paused:
                await loop.run_in_executor(self._executor, gate.wait_until_running, lambda: self._stopping)
                continue
            job = self._next_job()
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
        """Engine thread: run one image, composite, write it to history, return it."""
        gate = self.config.gate
        stop = job.cancel_event.is_set
        seed = (job.seed + index) % 2**32
        assert job.inputs is not None
        inputs = job.inputs
        engine_job = EngineJob(
            task=job.task,
            prompt=job.prompt,
            seed=seed,
            params=job.params,
            image=inputs.image,
            mask=inputs.mask,
            references=inputs.references,
            width=job.width,
            height=job.height,
        )
        step_times: list[float] = []
        last = time.monotonic()
        previews: dict[int, ImagePayload] = {}  # step -> preview for that step's progress event

        def on_preview(step: int, rgb: np.ndarray) -> None:
            try:
                previews[step] = encode_preview(rgb)
            except Exception:  # a preview is a nicety; it must never fail the job
                log.exception("preview encoding failed")

        def on_step(step: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            step_times.append(now - last)
            last = now
            mean = sum(step_times[-8:]) / len(step_times[-8:])
            remaining_images = job.count - index - 1
            eta = mean * ((total - step) + remaining_images * total)
            job.step, job.total_steps, job.eta_s = step, total, eta
            message = Progress(job_id=job.id, step=step, total=total, eta_s=round(eta, 2), image_index=index,
                               preview=previews.pop(step, None))
            loop.call_soon_threadsafe(self._emit, job, message)
            gate.wait_step(stop)

        started = time.monotonic()
        # Previews only for a client that asks now; otherwise the engine computes none (and older engines
        # without the keyword keep working).
        wants = self.wants_previews is not None and self.wants_previews(job.client_id)
        extra = {"on_preview": on_preview} if wants else {}
        result = self.engine.run(engine_job, on_step, stop, **extra)
        rgba = make_result(result.rgb, inputs.mask, int(job.params.get("feather", 0)))
        finished = self.config.clock()
        state = self.engine.state()
        provenance = {
            "task": job.task,
            "prompt": job.prompt,
            "seed": seed,
            "model": state.get("model", getattr(self.engine, "name", "")),
            "params": job.params,
            "job_id": job.id,
            "index": index,
            "editor": job.editor,
            "server_version": __version__,
            "duration_s": round(time.monotonic() - started, 3),
            "finished": finished,
            "recipe": result.info,
        }
        entry = f"{job.id}-{index}"
        kept = self.history.save(entry, rgba, {"provenance": provenance, "finished": finished, "label": job.label,
                                               "client_id": job.client_id})
        # Without a history file the pixels must stay in memory until acknowledged, or the result is lost.
        stored = StoredResult(index, seed, entry, provenance, finished, rgba=None if kept else rgba)
        return stored, rgba

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
