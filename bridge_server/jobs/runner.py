"""One image of one job, on the engine thread: run the engine with step progress and previews, turn its pixels
into the result patch, write it to history with its provenance, and hand it back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ace_protocol import __version__
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Message, Progress

from bridge_server.config import ServerConfig
from bridge_server.engine.base import Engine, EngineJob
from bridge_server.imaging.compositing import make_result
from bridge_server.jobs.delivery import encode_preview
from bridge_server.jobs.job import Job, StoredResult
from bridge_server.store.history import History

log = logging.getLogger(__name__)
#: Sends one event from the engine thread to the event loop (the queue passes `call_soon_threadsafe(emit, ...)`).
EmitFromThread = Callable[[Job, Message], None]

#: Steps whose duration the ETA averages over: recent enough to follow a change of canvas size.
ETA_WINDOW = 8


class StepClock:
    """Step progress of one image: the ETA from recent step times (and the images still to come), the job's
    progress fields, and the `progress` event to send. Used for the local engine thread and remote replicas alike."""

    def __init__(self, job: Job, index: int) -> None:
        self.job, self.index = job, index
        self.step_times: list[float] = []
        self.last = time.monotonic()

    def step(self, step: int, total: int, preview: ImagePayload | None = None) -> Progress:
        now = time.monotonic()
        self.step_times.append(now - self.last)
        self.last = now
        recent = self.step_times[-ETA_WINDOW:]
        mean = sum(recent) / len(recent)
        remaining_images = self.job.count - self.index - 1
        eta = mean * ((total - step) + remaining_images * total)
        job = self.job
        job.step, job.total_steps, job.eta_s = step, total, eta
        return Progress(
            job_id=job.id, step=step, total=total, eta_s=round(eta, 2), image_index=self.index, preview=preview
        )


def engine_job_for(job: Job, index: int) -> EngineJob:
    """What the engine is asked to make for image `index` of `job` (seed, seed+1, ... for count > 1)."""
    assert job.inputs is not None
    inputs = job.inputs
    inputs.materialize()  # queued inputs were kept encoded until now
    return EngineJob(
        task=job.task,
        prompt=job.prompt,
        seed=(job.seed + index) % 2**32,
        params=job.params,
        image=inputs.image,
        mask=inputs.mask,
        references=inputs.references,
        width=job.width,
        height=job.height,
    )


def make_one_image(
    config: ServerConfig,
    engine: Engine,
    history: History,
    job: Job,
    index: int,
    emit: EmitFromThread,
    wants_previews: bool,
) -> tuple[StoredResult, Any]:
    gate = config.gate
    stop = job.cancel_event.is_set
    engine_job = engine_job_for(job, index)
    clock = StepClock(job, index)
    previews: dict[int, ImagePayload] = {}  # step -> preview for that step's progress event

    def on_preview(step: int, rgb: np.ndarray) -> None:
        try:
            previews[step] = encode_preview(rgb)
        except Exception:  # a preview is a nicety; it must never fail the job
            log.exception("preview encoding failed")

    def on_step(step: int, total: int) -> None:
        emit(job, clock.step(step, total, previews.pop(step, None)))
        gate.wait_step(stop)

    started = time.monotonic()
    # Previews only for a client that asks now; otherwise the engine computes none (and older engines without the
    # keyword keep working).
    extra = {"on_preview": on_preview} if wants_previews else {}
    result = engine.run(engine_job, on_step, stop, **extra)
    model = engine.state().get("model", getattr(engine, "name", ""))
    return store_image(config, history, job, index, result.rgb, result.info, model, started)


def store_image(
    config: ServerConfig,
    history: History,
    job: Job,
    index: int,
    rgb: np.ndarray,
    info: dict[str, Any],
    model: str,
    started: float,
    extra_provenance: dict[str, Any] | None = None,
) -> tuple[StoredResult, Any]:
    """The engine's pixels -> the result patch (alpha from the feathered mask), written to history with its
    provenance. Runs wherever the daemon's disk is: on the engine thread locally, on a worker thread for replicas."""
    assert job.inputs is not None
    seed = (job.seed + index) % 2**32
    rgba = make_result(rgb, job.inputs.mask, int(job.params.get("feather", 0)))
    finished = config.clock()
    provenance = {
        "task": job.task,
        "prompt": job.prompt,
        "seed": seed,
        "model": model,
        "params": job.params,
        "job_id": job.id,
        "index": index,
        "editor": job.editor,
        "server_version": __version__,
        "duration_s": round(time.monotonic() - started, 3),
        "finished": finished,
        "recipe": info,
        **(extra_provenance or {}),
    }
    entry = f"{job.id}-{index}"
    kept = history.save(
        entry,
        rgba,
        {"provenance": provenance, "finished": finished, "label": job.label, "client_id": job.client_id},
        before=job.inputs.image,
    )
    # Without a history file the pixels must stay in memory until acknowledged, or the result is lost.
    stored = StoredResult(index, seed, entry, provenance, finished, rgba=None if kept else rgba)
    return stored, rgba
