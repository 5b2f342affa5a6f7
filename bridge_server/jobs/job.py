"""A job and the state it moves through. Plain data; the queue owns the transitions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class JobInputs:
    """Decoded pixels, dropped as soon as the job has run so a long queue holds no more than it must."""

    image: np.ndarray | None
    mask: np.ndarray | None
    references: list[np.ndarray]
    #: Encoded (PNG/WebP/JPEG) inputs stay compressed while the job waits: this decodes them when it runs.
    pending: Callable[[], JobInputs] | None = None
    #: Bytes the waiting job holds (its payloads as received), counted against the daemon's memory budget.
    held_bytes: int = 0

    def materialize(self) -> None:
        """Decode what was kept encoded (on the engine thread, when the job starts); idempotent."""
        if self.pending is not None:
            decoded, self.pending = self.pending(), None
            self.image, self.mask, self.references = decoded.image, decoded.mask, decoded.references


@dataclass
class StoredResult:
    index: int
    seed: int
    entry: str  # history entry name
    provenance: dict[str, Any]
    finished: float
    rgba: np.ndarray | None = None  # kept in memory until acknowledged (or always, when history is unwritable)


@dataclass
class Job:
    id: str
    client_id: str
    task: str
    prompt: str
    params: dict[str, Any]
    seed: int
    created: float
    width: int
    height: int
    editor: str = ""
    label: str = ""
    #: Whom the job counts against for queue shares: the connection that sent it, or the named token's person.
    principal: str = ""
    #: SHA-256 of the resume secret of its client_id's first holder (journalled, so it survives a restart).
    owner: str = ""
    person: str = ""  # the named token it came with ("" for the daemon's own token): fairness and usage per person
    inputs: JobInputs | None = None
    state: JobState = JobState.QUEUED
    position: int = 0
    step: int = 0
    total_steps: int = 0
    image_index: int = 0
    eta_s: float | None = None
    started: float | None = None
    finished: float | None = None
    results: list[StoredResult] = field(default_factory=list)
    error: tuple[str, str] | None = None
    acked: bool = False
    replica: str = ""  # the engine replica running it (serve --ray)
    restarts: int = 0  # times its replica died under it and it started again on another
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def count(self) -> int:
        return int(self.params.get("count", 1))

    def journal_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "task": self.task,
            "prompt": self.prompt,
            "params": self.params,
            "seed": self.seed,
            "created": self.created,
            "width": self.width,
            "height": self.height,
            "editor": self.editor,
            "label": self.label,
            "owner": self.owner,
            "person": self.person,
        }

    def summary(self) -> dict[str, Any]:
        """What the panel and `status` show about a job."""
        return {
            "job_id": self.id,
            "client_id": self.client_id,
            "editor": self.editor,
            "task": self.task,
            "prompt": self.prompt[:200],
            "label": self.label,
            "state": self.state.value,
            "position": self.position,
            "step": self.step,
            "total": self.total_steps,
            "image_index": self.image_index,
            "count": self.count,
            "eta_s": self.eta_s,
            "created": self.created,
            "person": self.person,
            "replica": self.replica,
            "restarts": self.restarts,
        }
