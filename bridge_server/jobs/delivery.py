"""The messages that carry a job's state and results to its client: live, and replayed when a client resumes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from ace_protocol.errors import ErrorCode
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Cancelled, Done, Failed, Message, Queued, Result, Started
from PIL import Image

from bridge_server.jobs.job import Job, JobState, StoredResult
from bridge_server.store.history import History, HistoryUnavailable

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


def result_message(history: History, job: Job, stored: StoredResult, rgba: Any = None) -> Result:
    """One result frame; the pixels come from memory when given or kept, else from the history file."""
    if rgba is None:
        rgba = stored.rgba if stored.rgba is not None else history.load_image(stored.entry)
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


def replay_messages(history: History, job: Job) -> list[Message]:
    """The messages that tell a (re)connected client where one of its jobs stands."""
    if job.state is JobState.QUEUED:
        return [Queued(job_id=job.id, position=job.position)]
    if job.state is JobState.RUNNING:
        return [Started(job_id=job.id)]
    messages: list[Message] = []
    if job.state is JobState.DONE or job.results:
        for stored in job.results:
            try:
                messages.append(result_message(history, job, stored))
            except HistoryUnavailable:
                return [
                    Failed(
                        code=ErrorCode.INTERRUPTED.value,
                        job_id=job.id,
                        message="the result was lost: the history folder did not keep it",
                    )
                ]
    if job.state is JobState.DONE:
        messages.append(Done(job_id=job.id))
    elif job.state is JobState.CANCELLED:
        messages.append(Cancelled(job_id=job.id))
    elif job.state is JobState.FAILED:
        code, text = job.error or (ErrorCode.INTERNAL.value, "failed")
        messages.append(Failed(code=code, message=text, job_id=job.id))
    return messages
