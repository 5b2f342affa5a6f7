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
        mean = sum(step_times[-ETA_WINDOW:]) / len(step_times[-ETA_WINDOW:])
        remaining_images = job.count - index - 1
        eta = mean * ((total - step) + remaining_images * total)
        job.step, job.total_steps, job.eta_s = step, total, eta
        emit(job, Progress(job_id=job.id, step=step, total=total, eta_s=round(eta, 2), image_index=index,
                           preview=previews.pop(step, None)))
        gate.wait_step(stop)

    started = time.monotonic()
    # Previews only for a client that asks now; otherwise the engine computes none (and older engines without the
    # keyword keep working).
    extra = {"on_preview": on_preview} if wants_previews else {}
    result = engine.run(engine_job, on_step, stop, **extra)
    rgba = make_result(result.rgb, inputs.mask, int(job.params.get("feather", 0)))
    finished = config.clock()
    provenance = {
        "task": job.task,
        "prompt": job.prompt,
        "seed": seed,
        "model": engine.state().get("model", getattr(engine, "name", "")),
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
    kept = history.save(entry, rgba, {"provenance": provenance, "finished": finished, "label": job.label,
                                      "client_id": job.client_id})
    # Without a history file the pixels must stay in memory until acknowledged, or the result is lost.
    stored = StoredResult(index, seed, entry, provenance, finished, rgba=None if kept else rgba)
    return stored, rgba
