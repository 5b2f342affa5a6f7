"""The life of one job, editor-neutral: submit, follow its typed events, collect its results, cancel it.

Two ways to follow a job, for the two ways editors run Python:
- `run_job` runs on a worker thread and hands every event to a callback (Krita's docker passes them on to the
  UI thread). The events are the protocol's own messages (`Accepted`, `Queued`, `Started`, `Progress`,
  `Result`), then one `JobEnded` that carries the decoded results or the failure.
- `wait_for_job` runs on the editor's main thread and keeps its UI alive while it waits (GIMP's procedures).
Status lines and progress fractions for either come from `status_text` and `progress_fraction`.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .protocol import client as protocol_client
from .protocol import images, messages, tasks

SEED_MAX = tasks.SEED_MAX


class UserError(Exception):
    """A failure the user can act on; `str()` is the whole message to show."""


class JobCancelled(Exception):
    """The user cancelled the job."""


@dataclass
class ResultImage:
    """One image of a finished job, decoded: straight-alpha RGBA of the region's size."""

    index: int
    count: int
    seed: int
    width: int
    height: int
    rgba: bytes
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobEnded:
    """The last event of a job: `done` with its results, or `failed` (code, message), or `cancelled`."""

    job_id: str | None
    state: str  # done | failed | cancelled
    results: tuple[ResultImage, ...] = ()
    code: str = ""
    message: str = ""


@dataclass
class JobRequest:
    """One press of Generate, ready to send. `local_id` names it before the daemon gives it a job id."""

    local_id: str
    task: str
    prompt: str
    image: images.ImagePayload | None
    mask: images.ImagePayload | None
    references: list[images.ImagePayload]
    params: dict[str, Any]
    label: str = ""
    handle: Any = None
    cancel_requested: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


#: (local id, event): the event is a protocol message or the final `JobEnded`.
Emit = Callable[[str, Any], None]
#: An image payload -> (width, height, straight RGBA bytes).
Decode = Callable[[images.ImagePayload], tuple[int, int, bytes]]


def decode_raw(image: images.ImagePayload) -> tuple[int, int, bytes]:
    """Raw payloads (what a daemon on this machine sends); editors pass their own decoder for PNG/WebP."""
    if image.format not in ("rgba8", "bgra8", "gray8"):
        raise ValueError(f"cannot decode a {image.format} result without the editor's image loader")
    raw = image.to_rgba8()
    return raw.width, raw.height, raw.data


def result_image(event: messages.Result, decode: Decode = decode_raw) -> ResultImage:
    width, height, rgba = decode(event.image)
    return ResultImage(event.index, event.count, event.seed, width, height, rgba, dict(event.provenance or {}))


def run_job(client: Any, request: JobRequest, emit: Emit, decode: Decode = decode_raw) -> None:
    """Submit one job and report its events until it ends. Never raises: a failure becomes `JobEnded(failed)`."""
    lid = request.local_id
    try:
        handle = client.submit(
            request.task,
            request.prompt,
            image=request.image,
            mask=request.mask,
            references=request.references,
            params=request.params,
            label=request.label,
        )
    except (protocol_client.ClientError, TimeoutError) as exc:
        emit(lid, JobEnded(None, "failed", code=str(getattr(exc, "code", "") or "connection"), message=str(exc)))
        return
    with request.lock:
        request.handle = handle
        cancel_now = request.cancel_requested
    emit(lid, messages.Accepted(id=lid, job_id=handle.id, position=handle.position, seed=handle.seed or 0))
    if cancel_now:
        _safe_cancel(handle)
    results: list[ResultImage] = []
    try:
        for event in handle.events():
            if isinstance(event, messages.Result):
                results.append(result_image(event, decode))
                emit(lid, event)
            elif isinstance(event, messages.Done):
                emit(lid, JobEnded(handle.id, "done", tuple(sorted(results, key=lambda r: r.index))))
            elif isinstance(event, messages.Failed):
                emit(lid, JobEnded(handle.id, "failed", code=event.code, message=event.message))
            elif isinstance(event, messages.Cancelled):
                emit(lid, JobEnded(handle.id, "cancelled"))
            else:
                emit(lid, event)
    except Exception as exc:  # a decoding error or a dropped client: report it, never kill the thread silently
        emit(lid, JobEnded(handle.id, "failed", code="internal", message=f"{type(exc).__name__}: {exc}"))


def collect_results(handle: Any, decode: Decode = decode_raw, timeout: float = 30.0) -> list[ResultImage]:
    """The results of a job that already finished (redelivered after a reconnect), in index order."""
    found = [result_image(e, decode) for e in handle.events(timeout=timeout) if isinstance(e, messages.Result)]
    return sorted(found, key=lambda r: r.index)


def _safe_cancel(handle: Any) -> None:
    try:
        handle.cancel()
    except protocol_client.ClientError:
        pass  # the connection is gone; the daemon cancels nothing, the job's result lands in history


def cancel_job(request: JobRequest) -> None:
    """Cancel from any thread; before the daemon accepted the job, it is cancelled as soon as it is."""
    with request.lock:
        request.cancel_requested = True
        handle = request.handle
    if handle is not None:
        _safe_cancel(handle)


# ------------------------------------------------------------------ what to show


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def queued_text(position: int | None) -> str:
    """`position` jobs run before this one (the running one counted)."""
    return f"Queued: position {position}" if position else "Waiting: next in line"


def status_text(event: Any) -> str | None:
    """The status line for one job event (None: nothing to say)."""
    if isinstance(event, (messages.Accepted, messages.Queued)):
        note = getattr(event, "note", None)  # e.g. "restarted on another GPU (...)" when its engine replica died
        return f"{note[:120]}; {queued_text(event.position).lower()}" if note else queued_text(event.position)
    if isinstance(event, messages.Started):
        return "Started"
    if isinstance(event, messages.Progress):
        eta = format_eta(event.eta_s)
        text = f"Step {event.step}/{event.total}"
        if event.image_index:
            text += f" (image {event.image_index + 1})"
        return text + (f", about {eta} left" if eta else "")
    if isinstance(event, messages.Result):
        return f"Received image {event.index + 1} of {event.count}"
    if isinstance(event, JobEnded):
        if event.state == "done":
            return f"Done: {len(event.results)} image(s)" if event.results else "Done"
        return "Cancelled." if event.state == "cancelled" else f"Failed: {event.message}"
    return None


def progress_fraction(event: Any) -> float | None:
    """How far the job is, 0..1, when the event says (None: unknown, e.g. queued)."""
    if isinstance(event, messages.Started):
        return 0.0
    if isinstance(event, messages.Progress):
        return min(1.0, event.step / max(1, event.total))
    if isinstance(event, JobEnded) and event.state == "done":
        return 1.0
    return None


# ------------------------------------------------------------------ following on the editor's main thread


class Ui(Protocol):
    def progress(self, fraction: float | None, text: str | None) -> None: ...

    def preview(self, image: Any) -> None: ...

    def cancel_requested(self) -> bool: ...

    def pump(self) -> None: ...


class HeadlessUi:
    """No window: nothing to pump, never cancelled; progress goes to a callback (e.g. a progress bar)."""

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
    results: list[messages.Result] = field(default_factory=list)


def wait_for_job(
    job: Any, ui: Ui, *, poll_s: float = 0.05, event_timeout_s: float | None = None, prefix: str = ""
) -> JobOutcome:
    """Follow a job's events until it ends, keeping the UI alive and cancelling when the UI asks.

    Returns the results (in index order) after `done`; raises JobCancelled, or UserError when the job failed.
    Status lines start with `prefix`."""
    events: queue.Queue[Any] = queue.Queue()

    def reader() -> None:
        try:
            for event in job.events():
                events.put(event)
        except BaseException as exc:  # handed to the main thread
            events.put(exc)

    threading.Thread(target=reader, name="ace-bridge-events", daemon=True).start()
    outcome = JobOutcome(job_id=str(job.id))
    cancel_sent = False
    last_event = time.monotonic()
    while True:
        ui.pump()
        if not cancel_sent and ui.cancel_requested():
            cancel_sent = True
            ui.progress(None, prefix + "cancelling…")
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
        if not isinstance(event, (messages.Done, messages.Failed, messages.Cancelled)):
            text = status_text(event)
            fraction = progress_fraction(event)
            if fraction is not None or text is not None:
                ui.progress(fraction, prefix + text if text else None)
        if isinstance(event, messages.Progress) and event.preview is not None:
            ui.preview(event.preview)
        if isinstance(event, messages.Result):
            outcome.results.append(event)
        elif isinstance(event, messages.Done):
            outcome.results.sort(key=lambda r: r.index)
            return outcome
        elif isinstance(event, messages.Cancelled):
            raise JobCancelled()
        elif isinstance(event, messages.Failed):
            if event.code == "cancelled":
                raise JobCancelled()
            raise UserError(f"The job failed ({event.code}): {event.message}")


# ------------------------------------------------------------------ before and after


def pick_seed(mode: str, fixed: int, rng: random.Random | None = None) -> int:
    """The seed to send: the fixed one, or a fresh random one (sent explicitly so the layer name can show it)."""
    if mode == "fixed":
        return max(0, min(int(fixed), SEED_MAX))
    return (rng or random.Random()).randint(0, SEED_MAX)


def task_title(task: str) -> str:
    """`Local Edit` for `local_edit`: the table's label without its ellipsis."""
    spec = tasks.TASKS.get(task)
    return spec.label.rstrip("…") if spec is not None else task


def check_offered(task: str, offered_tasks: list[Any], engine: dict[str, Any] | None = None) -> None:
    """Raise UserError when the daemon's loaded model does not offer `task`."""
    names = {t.get("name") for t in offered_tasks if isinstance(t, dict)}
    if task in names:
        return
    model = (engine or {}).get("model") or "the loaded model"
    offered = ", ".join(sorted(str(n) for n in names if n)) or "none"
    raise UserError(
        f"{task_title(task)} is not available: {model} does not offer the task '{task}' (it offers: "
        f"{offered}). Load a model with it in the daemon (see `ace-bridge models`), then try again."
    )


def is_expected_error(exc: BaseException) -> bool:
    """UserError, JobCancelled and the protocol client's errors: their message is all the user needs."""
    return isinstance(exc, (UserError, JobCancelled, protocol_client.ClientError))


def describe_error(exc: BaseException, console: str = "the error console") -> str:
    """A message for the user from any exception; protocol client errors already read well."""
    text = str(exc).strip()
    if isinstance(exc, JobCancelled):
        return text or "The job was cancelled."
    if is_expected_error(exc):
        return text or type(exc).__name__
    return f"ACE++ plug-in error ({type(exc).__name__}): {text or 'no details'}. Details are in {console}."
