"""What the queue needs from engines that run elsewhere (Ray Serve replicas, bridge_server/jobs/replicas.py), without
importing Ray: the queue runs up to `capacity()` jobs at once, each image through `make_image`, and restarts an
image whose replica died (`ReplicaLost`) on another one. The local engine thread stays the default and is not a pool.

A pool may also keep images going without the daemon (`InFlightPool`): a restarted daemon then takes back the jobs
that were running (`in_flight`) instead of reporting them interrupted, and `release`s each job when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ace_protocol.images import ImagePayload

from bridge_server.engine.base import EngineJob

#: How many times one job may lose its replica before it fails (each loss costs a restart of the current image).
MAX_RESTARTS = 3
#: What the editor reads in the `queued` event of a job whose replica died under it.
RESTART_NOTE = "restarted on another GPU"


class ReplicaLost(Exception):
    """The replica running an image died (process killed, node lost, out of memory): restart the image elsewhere."""

    def __init__(self, replica: str, reason: str) -> None:
        super().__init__(f"replica {replica or '?'} lost: {reason}")
        self.replica = replica
        self.reason = reason


@dataclass
class RemoteImage:
    """One image a replica made: its pixels and recipe, and who made it."""

    rgb: np.ndarray
    info: dict[str, Any]
    model: str
    replica: dict[str, Any] = field(default_factory=dict)


#: (step, total, preview or None), called on the event loop for every step the replica reports.
OnStep = Callable[[int, int, ImagePayload | None], None]
#: Called once the replica that took the image is known (its id, pid, node, GPU), before the first step.
OnStart = Callable[[dict[str, Any]], None]


@runtime_checkable
class ReplicaPool(Protocol):
    """Engines as remote replicas. Also an `Engine` for the rest of the daemon (available_tasks, state, close)."""

    def capacity(self) -> int:
        """How many images can run at once now (live replicas); at least 1 while any replica is expected."""

    async def make_image(
        self,
        job: EngineJob,
        *,
        key: tuple[str, int],
        piece: str,
        wants_previews: bool,
        is_cancelled: Callable[[], bool],
        on_start: OnStart,
        on_step: OnStep,
    ) -> RemoteImage:
        """Run image `key` = (job_id, index) on a free replica (preferring one that holds `piece`), or attach to it
        when it already runs there from before a daemon restart; raises JobCancelled at the step after
        `is_cancelled()` turns true, ReplicaLost when the replica dies, EngineError for a job failure."""

    def replica_lost(self, replica: str, reason: str) -> None:
        """Count a death against `replica` (status shows it; the pool refreshes who is alive)."""


@runtime_checkable
class InFlightPool(Protocol):
    """A pool whose images outlive the daemon process (Ray: the detached keeper actor)."""

    def in_flight(self) -> dict[str, dict[str, Any]]:
        """Blocking: job_id -> {index, request: {job: EngineJob fields (the inputs), previews}, ended} for every
        image held from a daemon before this one."""

    async def release(self, job_id: str) -> None:
        """The job ended here and its results are stored: stop holding it."""
