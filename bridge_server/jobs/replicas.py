"""ACE++ engines as Ray Serve replicas behind the one daemon (`ace-bridge serve --ray`, docs/scaling.md).

Imported only when `--ray` is given: without it Ray is never loaded. The daemon stays the front door (protocol,
tokens, TLS, fair queue, journal, history); each replica is one engine on one GPU (`num_gpus=1` where the cluster has
GPUs), takes one request at a time (`max_ongoing_requests=1`), streams its steps (progress and previews) back as a
Serve streaming response, and tells Serve's router which model piece it holds through `serve.multiplexed`, so the
next job for that piece goes to a replica that has it warm. Serve's HTTP proxy stays off: only handles reach it.

Daemon side, `RayReplicas` is both the queue's `ReplicaPool` and the app's `Engine` (tasks, state, close). It does not
call the replicas itself: the keeper (bridge_server/jobs/keeper.py), a detached actor, makes each call and holds the
image until the daemon has it, so a daemon killed mid-job takes its running jobs back after a restart (`in_flight`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # a call while disconnected must not start a stray cluster

import ray  # noqa: E402
from ace_protocol.errors import ErrorCode  # noqa: E402
from ray import serve  # noqa: E402
from ray.exceptions import RayActorError, RayError  # noqa: E402

from bridge_server.engine.base import EngineError, EngineJob, JobCancelled  # noqa: E402
from bridge_server.jobs.keeper import keeper_for  # noqa: E402
from bridge_server.jobs.pool import OnStart, OnStep, RemoteImage, ReplicaLost  # noqa: E402

log = logging.getLogger(__name__)

APP = "ace-bridge"
DEPLOYMENT = "AceEngine"
NAMESPACE = "ace-bridge"
#: A replica whose jobs fail this many times in a row fails its health check; Serve replaces it.
FAILURES_TO_TAKE_OUT = 3
#: How often the daemon asks Serve which replicas are alive.
REFRESH_S = 2.0
#: How long one read of the keeper waits for an image's next event.
POLL_S = 1.0
#: Failures that are the job's fault (bad input), not the replica's.
_JOB_FAULTS = {ErrorCode.BAD_REQUEST.value, ErrorCode.MODEL_MISSING.value, ErrorCode.CANCELLED.value}


# ---------------------------------------------------------------------------------------------------- replica side


def _gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:
        pass
    return "cpu"


@serve.deployment(
    name=DEPLOYMENT,
    max_ongoing_requests=1,  # one engine, one job: a second request waits in the router for a free replica
    health_check_period_s=2.0,
    health_check_timeout_s=60.0,
    graceful_shutdown_timeout_s=5.0,
)
class EngineReplica:
    """One ACE++ engine in one Ray worker process (`ray::ServeReplica:ace-bridge:AceEngine`)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from bridge_server.engine.ace_plus import AcePlusEngine

        self.spec = spec
        self.engine = AcePlusEngine(
            Path(spec["root"]),
            memory_mode=spec.get("memory_mode", "auto"),
            idle_unload_s=spec.get("idle_unload_s"),
            max_tokens_limit=spec.get("max_tokens", 16384),
            optimizations=spec.get("optimizations"),
            quantize=spec.get("quantize"),
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ace-replica-engine")
        self.lock = threading.Lock()
        self.busy = False
        self.jobs_done = 0
        self.failures = 0
        self.failing = 0  # in a row
        self.last_error = ""
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node = ray.util.get_node_ip_address()
        self.gpu = _gpu_name()
        if spec.get("load_at_start", True):
            self._load()

    def _load(self) -> None:
        """Load the model before Serve counts this replica as running: one one-step 64x64 `generate`. A replacement
        replica then takes its first job warm instead of loading inside it; a missing model shows in `status`."""
        from ace_protocol.tasks import TASKS

        try:
            params = TASKS["generate"].validate_params({"steps": 1, "width": 64, "height": 64, "seed": 0})
            self.engine.run(
                EngineJob(task="generate", prompt="", seed=0, params=params, width=64, height=64),
                lambda step, total: None,
                lambda: False,
            )
        except Exception as exc:  # the first real job reports it properly
            self.last_error = f"not loaded at start: {getattr(exc, 'message', exc)}"[:200]
            log.warning("replica %s: %s", self.replica_id, self.last_error)

    @serve.multiplexed(max_num_models_per_replica=8)
    async def hold(self, piece: str) -> str:
        """Marks `piece` (base, fft, local, subject, portrait) warm on this replica for Serve's router; the engine
        itself keeps its adapters loaded and switches between them per job."""
        return piece

    def describe(self) -> dict[str, Any]:
        try:
            state = self.engine.state()
        except Exception as exc:
            state = {"state": "error", "error": f"{type(exc).__name__}: {exc}"}
        return {
            "replica": self.replica_id,
            "pid": os.getpid(),
            "node": self.node,
            "gpu": self.gpu,
            "tier": state.get("memory_mode"),
            "engine": state.get("state"),
            "model": state.get("model"),
            "adapters": list(state.get("adapters") or []) + (["fft"] if state.get("fft_loaded") else []),
            "tasks": list(state.get("tasks") or self.engine.available_tasks()),
            "busy": self.busy,
            "jobs_done": self.jobs_done,
            "failures": self.failures,
            "failing": self.failing,
            "last_error": self.last_error,
            "spec": self.spec,
        }

    def check_health(self) -> None:
        if self.failing >= FAILURES_TO_TAKE_OUT:
            raise RuntimeError(f"{self.failing} jobs in a row failed on this replica ({self.last_error}); taken out")

    async def run(self, request: dict[str, Any]):  # an async generator: Serve streams what it yields
        piece = serve.get_multiplexed_model_id()
        if piece:
            await self.hold(piece)
        job = EngineJob(**request["job"])
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        stop = threading.Event()
        previews: dict[int, Any] = {}

        def on_preview(step: int, rgb: Any) -> None:
            from bridge_server.jobs.delivery import encode_preview

            try:
                previews[step] = encode_preview(rgb)  # small JPEG: what crosses the network is already compact
            except Exception:
                log.exception("preview encoding failed")

        def on_step(step: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("step", step, total, previews.pop(step, None)))

        def work() -> Any:
            with self.lock:
                self.busy = True
                try:
                    extra = {"on_preview": on_preview} if request.get("previews") else {}
                    return self.engine.run(job, on_step, stop.is_set, **extra)
                finally:
                    self.busy = False

        future = loop.run_in_executor(self.executor, work)
        future.add_done_callback(lambda _: events.put_nowait(("end",)))
        try:
            yield {"kind": "started", **self.describe()}
            while True:
                event = await events.get()
                if event[0] == "end":
                    break
                yield {"kind": "step", "step": event[1], "total": event[2], "preview": event[3]}
            try:
                result = future.result()
            except JobCancelled:
                yield {"kind": "cancelled"}
                return
            except EngineError as exc:
                self._failed(exc.code.value, exc.message)
                yield {"kind": "error", "code": exc.code.value, "message": exc.message, **self.describe()}
                return
            except Exception as exc:
                message = f"the engine failed: {type(exc).__name__}: {exc}"[:500]
                self._failed(ErrorCode.INTERNAL.value, message)
                yield {"kind": "error", "code": ErrorCode.INTERNAL.value, "message": message, **self.describe()}
                return
            self.jobs_done += 1
            self.failing = 0
            yield {"kind": "result", "rgb": result.rgb, "info": result.info, **self.describe()}
        finally:
            stop.set()  # cancelled by the daemon (or the stream dropped): the engine stops at its next step

    def _failed(self, code: str, message: str) -> None:
        if code in _JOB_FAULTS:
            return
        self.failures += 1
        self.failing += 1
        self.last_error = message[:200]


# ---------------------------------------------------------------------------------------------------- daemon side


def replica_count(requested: int | str, cluster_gpus: int) -> int:
    """`--replicas N` as given; `auto`: one per GPU in the cluster, or one engine on CPUs without GPUs."""
    if isinstance(requested, int) or str(requested).isdigit():
        return max(1, int(requested))
    return max(1, cluster_gpus)


def engine_request(job: EngineJob, previews: bool) -> dict[str, Any]:
    return {"job": asdict(job), "previews": previews}


class RayReplicas:
    """The daemon's view of the engine replicas: deploy or reattach, run images, keep a board of every replica."""

    name = "ray"

    def __init__(
        self,
        spec: dict[str, Any],
        *,
        address: str | None,
        replicas: int | str = "auto",
        local_cpus: int | None = None,
        object_store_bytes: int | None = None,
        app: str = APP,
    ) -> None:
        self.spec = spec
        self.address = address
        self.requested = replicas
        self.local_cpus = local_cpus
        self.object_store_bytes = object_store_bytes
        self.app = app
        self.target = 0
        self.live = 0
        self.reattached = False
        self.owns_cluster = False
        self.tasks: list[str] = []
        self.handle: Any = None
        self.keeper: Any = None  # the detached actor that holds in-flight images (jobs/keeper.py)
        # Images found lost in the keeper after a restart (their replica died while no daemon watched): the first
        # `make_image` for one reports the loss, so it is journalled and counted as any restart is.
        self._lost_before: dict[tuple[str, int], tuple[str, str]] = {}
        self.board: dict[str, dict[str, Any]] = {}  # replica id -> what status shows
        self.restarts = 0
        self.on_change: Callable[[], None] | None = None
        self._closed = False

    # -------------------------------------------------------------- connect, deploy, reattach

    def connect(self) -> RayReplicas:
        """Blocking (the app calls it off the event loop): join the cluster, then reattach to a running app with
        the same engine settings or deploy one."""
        options: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address and self.address != "local":
            ray.init(address=self.address, **options)
        else:  # a private cluster on this machine, for one box with several GPUs
            self.owns_cluster = True
            ray.init(
                num_cpus=self.local_cpus,
                object_store_memory=self.object_store_bytes,
                include_dashboard=False,
                **options,
            )
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.target = replica_count(self.requested, gpus)
        serve.start(proxy_location="Disabled")
        existing = self._existing()
        if existing is not None and existing[0] == self.target and existing[1].get("spec") == self.spec:
            self.reattached = True
            log.info("reattached to the running Serve app %r (%d replicas)", self.app, self.target)
        else:
            actor: dict[str, Any] = {"num_cpus": 1}
            if gpus:
                actor["num_gpus"] = 1
            deployment = cast(Any, EngineReplica).options(num_replicas=self.target, ray_actor_options=actor)
            started = time.monotonic()
            serve.run(deployment.bind(self.spec), name=self.app, route_prefix=None)
            log.info("deployed %d engine replica(s) in %.1f s", self.target, time.monotonic() - started)
        self.handle = serve.get_app_handle(self.app)
        first = self.handle.describe.remote().result(timeout_s=120)
        self.tasks = list(first.get("tasks") or [])
        self._note(first)
        self._refresh()
        self._keeper()
        return self

    def _existing(self) -> tuple[int, dict[str, Any]] | None:
        """(running replicas, one replica's description) of an app already deployed under our name, else None."""
        app = serve.status().applications.get(self.app)
        if app is None or str(app.status.value if hasattr(app.status, "value") else app.status) != "RUNNING":
            return None
        deployment = app.deployments.get(DEPLOYMENT)
        if deployment is None:
            return None
        # Replicas being replaced (STARTING, RECOVERING) count: the app is ours to reattach to, not to redeploy.
        running = _running(deployment, ("RUNNING", "STARTING", "RECOVERING", "UPDATING"))
        try:
            described = serve.get_app_handle(self.app).describe.remote().result(timeout_s=60)
        except Exception:
            return None
        return running, described

    # -------------------------------------------------------------- the board

    def _note(self, info: dict[str, Any], **changes: Any) -> dict[str, Any]:
        replica = str(info.get("replica") or "")
        if not replica:
            return {}
        entry = self.board.setdefault(replica, {"replica": replica, "state": "ready", "lost": 0, "errors": 0})
        for key in (
            "pid",
            "node",
            "gpu",
            "tier",
            "engine",
            "adapters",
            "jobs_done",
            "failures",
            "failing",
            "last_error",
        ):
            if key in info:
                entry[key] = info[key]
        entry.update(changes)
        if int(entry.get("failing") or 0) >= FAILURES_TO_TAKE_OUT and entry["state"] != "gone":
            entry["state"] = "taken out"
            entry["note"] = f"taken out after {entry['failing']} failures in a row: {entry.get('last_error', '')}"
        return entry

    def replica_lost(self, replica: str, reason: str) -> None:
        self.restarts += 1
        entry = self.board.get(replica)
        if entry is None or entry["state"] in ("died", "gone"):
            return  # already counted out (or died before this daemon started: the keeper reported it)
        entry.update(state="died", busy=False, note=reason)
        entry["lost"] = int(entry.get("lost", 0)) + 1
        self.live = max(0, self.live - 1)

    def _read_status(self) -> tuple[int, set[str]] | None:
        """Blocking (off the event loop): how many replicas Serve has running, and the ids of those alive."""
        try:
            app = serve.status().applications.get(self.app)
            deployment = app.deployments.get(DEPLOYMENT) if app is not None else None
            running = _running(deployment) if deployment is not None else 0
            names = {
                a["name"].rsplit("#", 1)[-1]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{self.app}#{DEPLOYMENT}#")
            }
        except RayError as exc:
            log.warning("cannot read the Serve status: %s", exc)
            return None
        # A dead replica can stay RUNNING in the controller's view for a health-check period while its replacement
        # already runs: never count more than the target.
        return min(running, self.target), names

    def _refresh(self) -> None:
        """Blocking; for `connect` (the watcher reads off the loop and applies on it)."""
        status = self._read_status()
        if status is not None:
            self._apply_status(*status)

    def _apply_status(self, live: int, names: set[str]) -> None:
        """On the event loop: the board follows who is alive; `on_change` when the capacity changed."""
        for replica, entry in self.board.items():
            if replica not in names and entry["state"] != "gone":
                entry["state"] = "gone" if entry["state"] != "taken out" else "taken out"
                entry["busy"] = False
        for replica in names - set(self.board):
            self.board[replica] = {"replica": replica, "state": "ready", "lost": 0, "errors": 0, "jobs_done": 0}
        changed = live != self.live
        self.live = live
        if changed and self.on_change is not None:
            self.on_change()

    async def watch(self, on_change: Callable[[], None]) -> None:
        """For the daemon's lifetime: follow replicas coming and going; `on_change` when the capacity changes."""
        self.on_change = on_change
        while not self._closed:
            await asyncio.sleep(REFRESH_S)
            status = await asyncio.to_thread(self._read_status)
            if status is not None:
                self._apply_status(*status)

    # -------------------------------------------------------------- ReplicaPool

    def capacity(self) -> int:
        return max(1, self.live or (self.target if not self.board else 0))

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
        """Through the keeper (bridge_server/jobs/keeper.py): it sends the image to a replica and holds its events,
        so the image goes on when this daemon dies; `start` attaches instead when the keeper already runs it."""
        job_id, index = key
        replica = ""
        lost = self._lost_before.pop(key, None)
        if lost is not None:
            raise ReplicaLost(*lost)
        try:
            keeper = self._keeper()
            await keeper.start.remote(job_id, index, engine_request(job, wants_previews), piece or "")
            seen = 0
            while True:
                pending = asyncio.ensure_future(keeper.events.remote(job_id, index, seen, POLL_S))
                while not pending.done():
                    await asyncio.wait({pending}, timeout=0.2)
                    if not pending.done() and is_cancelled():  # still waiting for a replica, or inside a step
                        pending.cancel()
                        await keeper.cancel.remote(job_id)
                        raise JobCancelled()
                events = pending.result()
                if events is None:
                    raise ReplicaLost(replica, "the job keeper no longer holds this image")
                seen += len(events)
                steps = [e for e in events if e["kind"] == "step"]
                for event in events:
                    kind = event["kind"]
                    if kind == "started":
                        replica = event["replica"]
                        self._note(event, state="ready", busy=True)
                        on_start(event)
                    elif kind == "step" and event is steps[-1]:  # a burst (after a reattach) shows as its last step
                        on_step(event["step"], event["total"], event.get("preview"))
                        if is_cancelled():  # the replica's engine stops at its next step
                            await keeper.cancel.remote(job_id)
                            raise JobCancelled()
                    elif kind == "cancelled":
                        raise JobCancelled()
                    elif kind == "lost":
                        raise ReplicaLost(str(event.get("replica") or replica), str(event.get("reason") or "lost"))
                    elif kind == "error":
                        entry = self._note(event, busy=False)
                        if entry and event["code"] not in _JOB_FAULTS:
                            entry["errors"] = int(entry.get("errors", 0)) + 1
                        raise EngineError(ErrorCode(event["code"]), event["message"])
                    elif kind == "result":
                        self._note(event, busy=False)
                        return RemoteImage(
                            event["rgb"],
                            event.get("info") or {},
                            str(event.get("model") or ""),
                            {k: event.get(k) for k in ("replica", "pid", "node", "gpu")},
                        )
        except RayActorError as exc:  # the keeper itself was lost (its node died): a new one reruns the image
            self.keeper = None
            raise ReplicaLost(replica, f"the job keeper was lost: {_short(exc)}") from exc
        except RayError as exc:
            raise ReplicaLost(replica, _short(exc)) from exc
        finally:
            held = self.board.get(replica)
            if held is not None:
                held["busy"] = False

    def _keeper(self) -> Any:
        if self.keeper is None:
            self.keeper = keeper_for(self.app, DEPLOYMENT, NAMESPACE)
        return self.keeper

    def in_flight(self) -> dict[str, dict[str, Any]]:
        """Blocking (the queue's restore runs it off the loop): the images the keeper holds from a daemon before
        this one, job_id -> {index, request, ended}; empty when there is no keeper to ask."""
        try:
            held: dict[str, dict[str, Any]] = ray.get(self._keeper().held.remote(), timeout=60)
        except RayError as exc:
            log.warning("cannot ask the job keeper what was running: %s", _short(exc))
            return {}
        for job_id, image in held.items():
            if image.get("ended") == "lost":
                self._lost_before[(job_id, int(image["index"]))] = (str(image.get("replica") or ""), image["reason"])
        return held

    async def release(self, job_id: str) -> None:
        """The job ended and its results are stored: the keeper forgets it."""
        try:
            await self._keeper().forget.remote(job_id)
        except RayError as exc:
            log.warning("the job keeper did not forget job %s: %s", job_id[:8], _short(exc))

    # -------------------------------------------------------------- Engine (for the rest of the daemon)

    def available_tasks(self) -> list[str]:
        return list(self.tasks)

    def state(self) -> dict[str, Any]:
        replicas = sorted(self.board.values(), key=lambda e: (e["state"] != "ready", e["replica"]))
        return {
            "state": "loaded" if self.live else "starting",
            "model": self.spec.get("root", ""),
            "tasks": self.available_tasks(),
            "ray": {
                "address": self.address or "local",
                "app": self.app,
                "reattached": self.reattached,
                "replicas": self.target,
                "live": self.live,
                "restarts": self.restarts,
            },
            "replicas": [dict(r) for r in replicas],
        }

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("engine replicas run through the job queue's replica pool, not on the engine thread")

    def unload(self) -> None:
        """Replicas keep their engines (each unloads on its own idle timer, when one is set)."""

    def close(self) -> None:
        """Leave a cluster we joined with the app running (a restarted daemon reattaches); tear down our own."""
        self._closed = True
        try:
            if self.owns_cluster:
                serve.shutdown()
        finally:
            ray.shutdown()


def _running(deployment: Any, states: tuple[str, ...] = ("RUNNING",)) -> int:
    """Replicas of a deployment in `serve.status()` in one of `states` (keys are ReplicaState members)."""
    return sum(
        int(n) for state, n in deployment.replica_states.items() if str(getattr(state, "value", state)) in states
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
