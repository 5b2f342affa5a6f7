"""The one small interface between the job queue and whatever runs the model.

The queue worker calls `Engine.run` on the engine thread with a validated `EngineJob`; the engine reports every
step through `on_step`, polls `is_cancelled` once per step, and returns the generated pixels at the region's size.
Alpha/compositing is not the engine's job (see bridge_server/compositing.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from ace_protocol.errors import ErrorCode, ProtocolError


@dataclass
class EngineJob:
    """One image to make. Arrays are numpy uint8: image/references HxWx4 RGBA (straight alpha), mask HxW."""

    task: str
    prompt: str
    seed: int
    params: dict[str, Any]
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    references: list[np.ndarray] = field(default_factory=list)
    width: int = 1024  # output size when there is no image
    height: int = 1024


@dataclass
class EngineResult:
    """Generated RGB (HxWx3 uint8) at the region's exact size (image size, or width x height without one)."""

    rgb: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # recipe numbers etc., stored in provenance


class JobCancelled(Exception):
    """Raised inside the engine when `is_cancelled()` turned true; no image is decoded."""


class EngineError(ProtocolError):
    """A job failure with a protocol error code (out_of_memory, model_missing, bad_request, internal)."""


class EngineSetupError(EngineError):
    """A failure the user fixes outside the job, typed so the CLI, status and the panel can say what to do.

    kind: no_gpu (no CUDA/MPS device for a full-size model) | unsupported_gpu | too_little_ram (host RAM below
    what the tier needs) | too_little_vram (no tier fits) | wrong_file (a file is not what its name or folder says)
    | model_missing (a file the tier needs is not there)."""

    def __init__(self, kind: str, code: ErrorCode | str, message: str) -> None:
        super().__init__(code, message)
        self.kind = kind

    def __reduce__(self):  # picklable across threads/processes, like ProtocolError
        return (type(self), (self.kind, self.code, self.message))


StepCallback = Callable[[int, int], None]  # (steps done, total steps)
# (steps done, uint8 RGB HxWx3): a small look at where the image is heading, at most ~256 px on the long side.
PreviewCallback = Callable[[int, np.ndarray], None]


class Engine(Protocol):
    name: str

    def available_tasks(self) -> list[str]:
        """Names of the tasks the installed models can run (the welcome table is filtered by this)."""

    def state(self) -> dict[str, Any]:
        """JSON-able engine state: {state: loaded|loading|unloaded|missing|error, model, device, memory_mode, ...}."""

    def run(
        self,
        job: EngineJob,
        on_step: StepCallback,
        is_cancelled: Callable[[], bool],
        *,
        on_preview: PreviewCallback | None = None,
    ) -> EngineResult:
        """Blocking; called only on the engine thread. Raises JobCancelled or EngineError.

        `on_preview` (optional; engines may ignore it, callers pass it only when someone will look): called on the
        engine thread with (step, rgb) right BEFORE `on_step` for the same step, every few steps but never on the
        last one. rgb covers the part of the canvas that becomes the result (not resized to the region).
        Without it the engine computes no preview at all."""

    def unload(self) -> None:
        """Free the model (idle timeout); the next `run` loads it again."""

    def close(self) -> None:
        """Release everything at shutdown."""


def engine_error(code: ErrorCode, message: str) -> EngineError:
    return EngineError(code, message)
