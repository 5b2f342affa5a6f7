"""Editor-independent logic of the GIMP plug-in: actions, job planning, the event loop, profile state.

Pure Python over `ace_protocol` (no gi), so it runs in the host's unit tests. The GIMP side (acegimp_gimp.py)
reads pixels into `ImagePayload`s, calls `plan_job`/`run_job`, and writes the results back as layers.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ace_protocol.geometry import Bounds, Extent, context_region
from ace_protocol.images import ImagePayload
from ace_protocol.tasks import TASKS

PLUGIN_VERSION = "0.1.0"
CLIENT_NAME = "ace-bridge-gimp"
MENU_PATH = "<Image>/Filters/ACE++"
FETCH_PROCEDURE = "python-fu-ace-bridge-fetch-results"
FETCH_LABEL = "Fetch Finished Results…"
PARASITE_NAME = "ace-bridge-provenance"
STATE_FILE = "ace-bridge-gimp.json"
STATE_VERSION = 1
#: GParamSpec ints are 32-bit: the plug-in's seed argument stops there.
SEED_ARG_MAX = 2**31 - 1


class UserError(Exception):
    """A failure the user can act on; `str()` is the whole message shown in GIMP."""


class JobCancelled(Exception):
    """The user cancelled the job (progress or dialog)."""


@dataclass(frozen=True)
class Action:
    task: str
    procedure: str
    label: str
    needs_image: bool
    needs_selection: bool
    takes_reference: bool
    param_names: tuple[str, ...]
    guidance: float = 50.0  # the task's default from the table: 50 for ACE++ tasks, 30 for plain Fill


def _guidance_default(task) -> float:
    spec = task.param("guidance")
    return 50.0 if spec is None else float(spec.default)


ACTIONS: tuple[Action, ...] = tuple(
    Action(t.name, t.gimp_procedure, t.label, t.needs_image, t.needs_selection, t.max_references > 0,
           tuple(p.name for p in t.params), _guidance_default(t))
    for t in TASKS.values()
)
ACTIONS_BY_PROCEDURE = {a.procedure: a for a in ACTIONS}


@dataclass
class Settings:
    """The procedure's arguments, as plain values (the adapter reads them from the GIMP config)."""

    prompt: str = ""
    seed: int = -1
    steps: int = 28
    count: int = 1
    guidance: float | None = None  # None: the task's default (Action.guidance)
    padding: int = -1  # -1: automatic (grows with the selection)
    feather: int = 8
    source: str = "visible"  # visible | layer
    mode: str = "repaint"
    face: bool = False
    width: int = 0  # 0: from the selection, else the canvas
    height: int = 0
    url: str = ""
    token: str = ""


@dataclass(frozen=True)
class JobPlan:
    """What to read and where the result goes."""

    region: Bounds  # context region sent as the image (or the output area for tasks without an image)
    selection: Bounds | None
    read_image: bool
    placement: str  # "top" (visible image read) or "above-active" (only the active layer read)


def selection_needed_message(action: Action) -> str:
    return (f"{action.label.rstrip('…')} changes only the selected area: make a selection first "
            "(for example with the Rectangle or Free Select tool), then run it again.")


def plan_job(action: Action, settings: Settings, canvas: Extent, selection: Bounds | None) -> JobPlan:
    """Decide region and placement; raises UserError when the task needs a selection and there is none."""
    if selection is not None and selection.is_empty:
        selection = None
    if action.needs_selection and selection is None:
        raise UserError(selection_needed_message(action))
    placement = "above-active" if settings.source == "layer" and action.needs_image else "top"
    if action.needs_image:
        padding = None if settings.padding < 0 else settings.padding
        region = context_region(selection, canvas, padding)
        return JobPlan(region, selection, True, placement)
    # Tasks without an input image generate into the selection's bounds, or the whole canvas.
    region = selection.clamp(canvas) if selection is not None else Bounds(0, 0, canvas.width, canvas.height)
    return JobPlan(region, selection, False, placement)


def full_mask(region: Bounds) -> ImagePayload:
    return ImagePayload(region.width, region.height, "gray8", b"\xff" * (region.width * region.height))


def build_params(action: Action, settings: Settings, plan: JobPlan) -> dict[str, Any]:
    """The `params` of `submit`, limited to the ones the task has."""
    values: dict[str, Any] = {
        "seed": int(settings.seed),
        "steps": int(settings.steps),
        "count": int(settings.count),
        "guidance": float(action.guidance if settings.guidance is None else settings.guidance),
        "feather": int(settings.feather),
        "mode": settings.mode,
        "face": bool(settings.face),
        "width": int(settings.width) or plan.region.width,
        "height": int(settings.height) or plan.region.height,
    }
    for side in ("width", "height"):
        values[side] = max(64, min(4096, values[side]))
    return {k: v for k, v in values.items() if k in action.param_names}


def check_offered(action: Action, offered_tasks: list[Any], engine: dict[str, Any] | None = None) -> None:
    """Raise UserError when the daemon's loaded model does not offer the action's task."""
    names = {t.get("name") for t in offered_tasks if isinstance(t, dict)}
    if action.task in names:
        return
    model = (engine or {}).get("model") or "the loaded model"
    offered = ", ".join(sorted(str(n) for n in names if n)) or "none"
    raise UserError(f"{action.label.rstrip('…')} is not available: {model} does not offer the task "
                    f"'{action.task}' (it offers: {offered}). Load a model with it in the daemon "
                    "(see `ace-bridge models`), then try again.")


def queued_text(position: int | None) -> str:
    """What the progress bar says while a job waits: `position` jobs run before it (the running one counted)."""
    return f"ACE++: queued, position {position}" if position else "ACE++: next in queue"


def progress_update(event: Any) -> tuple[float | None, str | None]:
    """(fraction or None, text or None) for GIMP's progress bar from one job event."""
    kind = getattr(event, "TYPE", "")
    if kind == "queued":
        return None, queued_text(getattr(event, "position", 0))
    if kind == "started":
        return 0.0, "ACE++: started"
    if kind == "progress":
        total = max(1, int(getattr(event, "total", 1) or 1))
        step = int(getattr(event, "step", 0) or 0)
        eta = getattr(event, "eta_s", None)
        text = f"ACE++: step {step}/{total}"
        if getattr(event, "image_index", 0):
            text += f" (image {event.image_index + 1})"
        if eta is not None:
            text += f", about {max(0, round(eta))} s left"
        return min(1.0, step / total), text
    if kind == "result":
        return None, f"ACE++: received image {event.index + 1} of {event.count}"
    return None, None


def layer_name(task: str, prompt: str, seed: int | None) -> str:
    short = " ".join(prompt.split())
    if len(short) > 40:
        short = short[:39] + "…"
    label = TASKS[task].label.rstrip("…") if task in TASKS else task
    return f"[ACE++] {label}: {short}" + (f" ({seed})" if seed is not None else "")


def provenance_bytes(result: Any, request: dict[str, Any]) -> bytes:
    """The layer parasite: the daemon's provenance merged over what the plug-in asked for, as UTF-8 JSON."""
    data: dict[str, Any] = {"format": "ace-bridge-provenance", "version": 1}
    data.update({k: v for k, v in request.items() if k in ("task", "prompt", "params", "region")})
    data["seed"] = getattr(result, "seed", None)
    data["job_id"] = getattr(result, "job_id", None)
    data["index"] = getattr(result, "index", 0)
    data.update(getattr(result, "provenance", None) or {})
    return json.dumps(data, sort_keys=True, default=str).encode("utf-8")


def parse_provenance(data: bytes) -> dict[str, Any]:
    value = json.loads(bytes(data).decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("provenance parasite is not a JSON object")
    return value


# ------------------------------------------------------------------ profile state


class ProfileState:
    """Per-GIMP-profile state: a stable client id, the last session, and jobs whose results are not inserted
    yet (with the region they belong to), so Fetch Finished Results can place them after a restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {"version": STATE_VERSION, "client_id": "", "session": None, "pending": {}}
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = None
        if isinstance(loaded, dict):
            self.data.update({k: loaded[k] for k in ("client_id", "session", "pending") if k in loaded})
            if not isinstance(self.data["pending"], dict):
                self.data["pending"] = {}
        if not self.data["client_id"]:
            self.data["client_id"] = f"gimp-{uuid.uuid4().hex[:16]}"
            self.save()

    @property
    def client_id(self) -> str:
        return str(self.data["client_id"])

    @property
    def session(self) -> str | None:
        return self.data.get("session") or None

    @session.setter
    def session(self, value: str | None) -> None:
        if value != self.data.get("session"):
            self.data["session"] = value
            self.save()

    def pending(self, job_id: str) -> dict[str, Any] | None:
        return self.data["pending"].get(job_id)

    def add_pending(self, job_id: str, meta: dict[str, Any]) -> None:
        self.data["pending"][job_id] = meta
        self.save()

    def remove_pending(self, job_id: str) -> None:
        if self.data["pending"].pop(job_id, None) is not None:
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


# ------------------------------------------------------------------ the job loop


class Ui(Protocol):
    def progress(self, fraction: float | None, text: str | None) -> None: ...

    def preview(self, image: Any) -> None: ...

    def cancel_requested(self) -> bool: ...

    def pump(self) -> None: ...


class HeadlessUi:
    """No dialog: nothing to pump, never cancelled; progress goes to a callback (GIMP's progress bar)."""

    def __init__(self, on_progress: Callable[[float | None, str | None], None] | None = None) -> None:
        self._on_progress = on_progress

    def progress(self, fraction: float | None, text: str | None) -> None:
        if self._on_progress:
            self._on_progress(fraction, text)

    def preview(self, image: Any) -> None:
        pass  # nowhere to show it

    def cancel_requested(self) -> bool:
        return False

    def pump(self) -> None:
        pass


@dataclass
class JobOutcome:
    job_id: str
    results: list[Any] = field(default_factory=list)


def wait_for_job(job: Any, ui: Ui, *, poll_s: float = 0.05, event_timeout_s: float | None = None) -> JobOutcome:
    """Follow a job's events until it ends, keeping the UI alive and cancelling when the UI asks.

    Returns the results (in index order) after `done`; raises JobCancelled or UserError (job failed)."""
    events: queue.Queue[Any] = queue.Queue()

    def reader() -> None:
        try:
            for event in job.events():
                events.put(event)
        except BaseException as exc:  # handed to the main thread
            events.put(exc)

    threading.Thread(target=reader, name="ace-bridge-gimp-events", daemon=True).start()
    outcome = JobOutcome(job_id=str(job.id))
    cancel_sent = False
    last_event = time.monotonic()
    while True:
        ui.pump()
        if not cancel_sent and ui.cancel_requested():
            cancel_sent = True
            ui.progress(None, "ACE++: cancelling…")
            try:
                job.cancel()
            except Exception:
                raise JobCancelled() from None
        try:
            event = events.get(timeout=poll_s)
        except queue.Empty:
            if event_timeout_s is not None and time.monotonic() - last_event > event_timeout_s:
                raise UserError(f"The daemon sent nothing about job {job.id} for {event_timeout_s:.0f} s.") from None
            continue
        last_event = time.monotonic()
        if isinstance(event, BaseException):
            raise UserError(f"Lost the job's events: {event}") from event
        fraction, text = progress_update(event)
        if fraction is not None or text is not None:
            ui.progress(fraction, text)
        kind = getattr(event, "TYPE", "")
        if kind == "progress" and getattr(event, "preview", None) is not None:
            ui.preview(event.preview)
        if kind == "result":
            outcome.results.append(event)
        elif kind == "done":
            outcome.results.sort(key=lambda r: r.index)
            return outcome
        elif kind == "cancelled":
            raise JobCancelled()
        elif kind == "failed":
            code = getattr(event, "code", "internal")
            if code == "cancelled":
                raise JobCancelled()
            raise UserError(f"The job failed ({code}): {getattr(event, 'message', '')}")


_CLIENT_ERRORS = ("DaemonNotRunning", "Unauthorized", "VersionMismatch", "ClientError", "JobError")


def is_expected_error(exc: BaseException) -> bool:
    """UserError and the protocol client's errors: their message is all the user needs."""
    return isinstance(exc, UserError) or any(c.__name__ in _CLIENT_ERRORS for c in type(exc).__mro__)


def describe_error(exc: BaseException) -> str:
    """A message for the user from any exception; protocol client errors already read well."""
    text = str(exc).strip()
    cls = type(exc).__name__
    if is_expected_error(exc):
        return text or cls
    return f"ACE++ plug-in error ({cls}): {text or 'no details'}. Details are in GIMP's error console."
