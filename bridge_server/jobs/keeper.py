"""The keeper of in-flight images (`serve --ray`): a detached Ray actor that sends each image to the engine replicas
and holds its events and result until the daemon has stored it.

The daemon reads the keeper, not the replica's stream, so the job does not depend on the daemon's process: a daemon
killed mid-job finds, once restarted, the image still running (or finished) in the keeper and attaches to it; an
image whose replica died while no daemon watched is rerun from the inputs the keeper still holds. One image per job
at a time (`start` replaces the job's previous image); the daemon forgets a job here when it ends.

Imported only with `--ray` (through bridge_server/jobs/replicas.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ace_protocol.errors import ErrorCode
from ray import serve
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

#: Terminal events of an image; after one the image is over (a `lost` one is rerun by the daemon).
ENDS = ("result", "error", "cancelled", "lost")


class _Image:
    """One image of one job in the keeper: what was asked, and every event the replica sent for it."""

    def __init__(self, index: int, request: dict[str, Any], piece: str) -> None:
        self.index = index
        self.request = request
        self.piece = piece
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> str:
        """The kind of its terminal event, or "" while it runs."""
        return self.events[-1]["kind"] if self.events and self.events[-1]["kind"] in ENDS else ""

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()


@ray.remote(num_cpus=0, max_restarts=0)
class JobKeeper:
    """Lives in the cluster, not in the daemon (`lifetime="detached"`): survives a daemon that dies."""

    def __init__(self, app: str, deployment: str) -> None:
        self.app = app
        self.deployment = deployment
        self.images: dict[str, _Image] = {}  # job_id -> its current image
        self.handle: Any = None  # the Serve app's handle, made once

    async def start(self, job_id: str, index: int, request: dict[str, Any], piece: str) -> bool:
        """Send image `index` of a job to a replica; True when it started now. False when that image already runs
        or has ended here (a restarted daemon attaches to it instead); one that ended `lost` starts again."""
        held = self.images.get(job_id)
        if held is not None and held.index == index and held.ended != "lost":
            return False
        if held is not None and held.task is not None:
            held.task.cancel()
        image = _Image(index, request, piece)
        self.images[job_id] = image
        image.task = asyncio.get_running_loop().create_task(self._drive(image))
        return True

    async def _drive(self, image: _Image) -> None:
        replica = ""
        stream: Any = None
        try:
            if self.handle is None:
                self.handle = serve.get_app_handle(self.app)
            handle = self.handle.options(stream=True, multiplexed_model_id=image.piece or "")
            stream = handle.run.remote(image.request)
            async for event in stream:
                if event.get("kind") == "started":
                    replica = str(event.get("replica") or "")
                image.add(event)
                if image.ended:
                    return
            image.add({"kind": "lost", "replica": replica, "reason": "the replica ended the job without a result"})
        except asyncio.CancelledError:  # the daemon cancelled the job: the replica's engine stops at its next step
            if stream is not None:
                stream.cancel()
            image.add({"kind": "cancelled"})
        except RayTaskError as exc:  # the replica's code raised: the job's failure, not the replica's death
            image.add({"kind": "error", "code": ErrorCode.INTERNAL.value, "message": f"the replica failed: {exc}"})
        except (RayActorError, RayError) as exc:  # process killed, node lost, out of memory
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
            image.add({"kind": "lost", "replica": replica, "reason": reason})
        except Exception as exc:  # anything else must still end the image, or the daemon would wait for ever
            log.exception("keeper: image of job failed")
            image.add({"kind": "lost", "replica": replica, "reason": f"{type(exc).__name__}: {exc}"[:200]})

    async def events(self, job_id: str, index: int, since: int, wait_s: float) -> list[dict[str, Any]] | None:
        """The image's events from `since` on, waiting up to `wait_s` for a new one; None when the keeper does
        not hold that image (it was forgotten, or this keeper is a new one)."""
        image = self.images.get(job_id)
        if image is None or image.index != index:
            return None
        if len(image.events) <= since and not image.ended:
            image.changed.clear()
            try:
                await asyncio.wait_for(image.changed.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        return image.events[since:]

    async def cancel(self, job_id: str) -> None:
        image = self.images.get(job_id)
        if image is not None and image.task is not None and not image.task.done():
            image.task.cancel()

    async def forget(self, job_id: str) -> None:
        """The job ended in the daemon (its results are stored): drop what the keeper holds for it."""
        image = self.images.pop(job_id, None)
        if image is not None and image.task is not None and not image.task.done():
            image.task.cancel()

    async def held(self) -> dict[str, dict[str, Any]]:
        """What a restarted daemon reattaches to: job_id -> {index, request (the inputs), ended, and for a lost
        image its replica and reason}."""
        held = {}
        for job_id, image in self.images.items():
            held[job_id] = {"index": image.index, "request": image.request, "ended": image.ended}
            if image.ended == "lost":
                last = image.events[-1]
                held[job_id].update(replica=last.get("replica", ""), reason=last.get("reason", "lost"))
        return held


def keeper_for(app: str, deployment: str, namespace: str) -> Any:
    """The app's keeper: the running one (after a daemon restart), else a new one, detached so it outlives this
    daemon, and placed on this daemon's node where possible (the node least likely to be lost with a GPU)."""
    return JobKeeper.options(  # type: ignore[attr-defined]
        name=f"{app}-keeper",
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
    ).remote(app, deployment)
