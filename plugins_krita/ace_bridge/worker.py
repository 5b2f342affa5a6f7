"""The connection to the daemon, off the UI thread.

`run_job` is the Qt-free core (a blocking client in, events out through a callback); `BridgeWorker` runs it on
Python threads and hands every event to the UI thread through a Qt signal. The protocol client reconnects by
itself with the same session, so a daemon restart during a job only shows as "reconnecting" and the job's result
still arrives; if the daemon stays away, the worker keeps trying to connect in the background.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ace_protocol import wsmask
from ace_protocol.client import BridgeClient, ClientError, DaemonNotRunning, Unauthorized, VersionMismatch
from ace_protocol.images import ImagePayload

from .model import PLUGIN_VERSION, ResultImage
from .qt_compat import FORMAT_RGBA8888, QImage, QObject, Signal, qimage_bytes

Emit = Callable[[str, str, dict], None]
wsmask.install()  # the vendored websockets has no C speed-up: mask outgoing frames in cache-sized slices


@dataclass
class JobSpec:
    """One Generate press, ready to send. `local_id` names it before the daemon gives it a job id."""

    local_id: str
    task: str
    prompt: str
    image: ImagePayload | None
    mask: ImagePayload | None
    references: list[ImagePayload]
    params: dict[str, Any]
    label: str = ""
    handle: Any = None
    cancel_requested: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def decode_result(image: ImagePayload) -> tuple[int, int, bytes]:
    """Straight RGBA bytes of a result payload (raw on loopback; PNG/WebP from a remote daemon via QImage)."""
    if image.format in ("rgba8", "bgra8", "gray8"):
        raw = image.to_rgba8()
        return raw.width, raw.height, raw.data
    qimg = QImage.fromData(image.data)
    if qimg.isNull():
        raise ValueError(f"cannot decode a {image.format} result")
    qimg = qimg.convertToFormat(FORMAT_RGBA8888)
    data = qimage_bytes(qimg)
    stride, w, h = qimg.bytesPerLine(), qimg.width(), qimg.height()
    if stride != w * 4:
        data = b"".join(data[y * stride: y * stride + w * 4] for y in range(h))
    return w, h, data


def run_job(client: Any, spec: JobSpec, emit: Emit) -> None:
    """Submit one job and report its events until it ends. Never raises: failures become a `failed` event."""
    lid = spec.local_id
    try:
        handle = client.submit(spec.task, spec.prompt, image=spec.image, mask=spec.mask,
                               references=spec.references, params=spec.params, label=spec.label)
    except (ClientError, TimeoutError) as exc:
        emit(lid, "failed", {"code": str(getattr(exc, "code", "") or "connection"), "message": str(exc)})
        return
    with spec.lock:
        spec.handle = handle
        cancel_now = spec.cancel_requested
    emit(lid, "accepted", {"job_id": handle.id, "position": handle.position, "seed": handle.seed})
    if cancel_now:
        _safe_cancel(handle)
    results: list[ResultImage] = []
    try:
        for ev in handle.events():
            kind = ev.TYPE
            if kind == "queued":
                emit(lid, "queued", {"position": ev.position})
            elif kind == "started":
                emit(lid, "started", {})
            elif kind == "progress":
                shot = getattr(ev, "preview", None)
                preview = bytes(shot.data) if shot is not None and shot.format in ("jpeg", "png") else None
                emit(lid, "progress", {"step": ev.step, "total": ev.total, "eta_s": ev.eta_s, "preview": preview})
            elif kind == "result":
                w, h, rgba = decode_result(ev.image)
                results.append(ResultImage(ev.index, ev.count, ev.seed, w, h, rgba, dict(ev.provenance or {})))
                emit(lid, "result", {"index": ev.index, "count": ev.count, "seed": ev.seed})
            elif kind == "done":
                emit(lid, "done", {"job_id": handle.id, "results": results})
            elif kind == "failed":
                emit(lid, "failed", {"code": ev.code, "message": ev.message})
            elif kind == "cancelled":
                emit(lid, "cancelled", {"job_id": handle.id})
    except Exception as exc:  # a decoding error or a dropped client: report it, never kill the thread silently
        emit(lid, "failed", {"code": "internal", "message": f"{type(exc).__name__}: {exc}"})


def _safe_cancel(handle: Any) -> None:
    try:
        handle.cancel()
    except ClientError:
        pass  # the connection is gone; the daemon cancels nothing, the job's result lands in history


def cancel_job(spec: JobSpec) -> None:
    """Cancel from any thread; before the daemon accepted the job, it is cancelled as soon as it is."""
    with spec.lock:
        spec.cancel_requested = True
        handle = spec.handle
    if handle is not None:
        _safe_cancel(handle)


class BridgeWorker(QObject):
    """Owns one `BridgeClient`; all signals arrive on the thread the worker lives in (the UI thread)."""

    connection_changed = Signal(str, str)  # state (connecting|connected|reconnecting|disconnected|error), message
    welcome_received = Signal(object)  # dict: tasks, engine, limits, server_version
    job_event = Signal(str, str, object)  # local id, kind, payload
    redelivered = Signal(object)  # list of (job_id, results) that finished while Krita was away

    def __init__(self, url: str = "", token: str = "", client_id: str = "", editor: str = "krita",
                 client_factory: Callable[..., Any] | None = None, retry_s: float = 2.0) -> None:
        super().__init__()
        self.url, self.token, self.client_id, self.editor = url, token, client_id, editor
        self._factory = client_factory or BridgeClient
        self._retry_s = retry_s
        self.client: Any = None
        self.state = "disconnected"
        self._jobs: dict[str, JobSpec] = {}
        self._stop = threading.Event()
        self._connect_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- connection
    def start(self) -> None:
        """Connect in the background, retrying until connected or stopped."""
        with self._lock:
            if self._connect_thread is not None and self._connect_thread.is_alive():
                return
            self._stop.clear()
            self._connect_thread = threading.Thread(target=self._connect_loop, name="ace-bridge-connect", daemon=True)
            self._connect_thread.start()

    def reconfigure(self, url: str, token: str) -> None:
        self.stop()
        self.url, self.token = url, token
        self.start()

    def _set_state(self, state: str, message: str = "") -> None:
        self.state = state
        self.connection_changed.emit(state, message)

    def _connect_loop(self) -> None:
        while not self._stop.is_set():
            self._set_state("connecting", "")
            try:
                client = self._factory(self.url or None, self.token or None, client_id=self.client_id or None,
                                       client_name="ace-bridge-krita", client_version=PLUGIN_VERSION,
                                       editor=self.editor, previews=True)
                client.on_connection_change = self._on_client_state
                welcome = client.connect()
            except (Unauthorized, VersionMismatch) as exc:
                self._set_state("error", str(exc))
                return  # retrying cannot help; the user must fix the settings
            except (DaemonNotRunning, ClientError, OSError) as exc:
                self._set_state("disconnected", str(exc))
                if self._stop.wait(self._retry_s):
                    return
                continue
            # Results that finished while Krita was away, collected before any job of ours can be submitted.
            self._collect_redelivered(client, set(getattr(welcome, "pending", None) or ()))
            self.client = client
            self._set_state("connected", f"ace-bridge {welcome.server_version}")
            self.welcome_received.emit({"tasks": list(welcome.tasks), "engine": dict(welcome.engine),
                                        "limits": dict(welcome.limits), "server_version": welcome.server_version})
            return

    def _collect_redelivered(self, client: Any, pending: set[str]) -> None:
        """Only jobs the daemon announced as pending in `welcome`: the client can also list a live job whose
        first event raced ahead of `submit()` returning, and reading that one here would steal its events."""
        if not pending:
            return
        found = []
        try:
            for handle in client.fetch_unacknowledged(wait=0.5):
                if handle.id not in pending:
                    continue
                results = []
                for ev in handle.events(timeout=30):
                    if ev.TYPE == "result":
                        w, h, rgba = decode_result(ev.image)
                        results.append(ResultImage(ev.index, ev.count, ev.seed, w, h, rgba, dict(ev.provenance or {})))
                found.append((handle.id, results))
        except Exception:  # redelivery is a bonus; a failure here must not break the connection
            pass
        if found:
            self.redelivered.emit(found)

    def _on_client_state(self, state: str) -> None:
        if state == "disconnected" and not self._stop.is_set():
            self.client = None
            self._set_state("disconnected", "lost the daemon; retrying")
            threading.Thread(target=self._delayed_restart, daemon=True).start()
        elif state == "reconnecting":
            self._set_state("reconnecting", "daemon restarting? reconnecting…")
        elif state == "connected" and self.client is not None and self.state != "connected":  # a reconnect
            self._set_state("connected", "reconnected")

    def _delayed_restart(self) -> None:
        if not self._stop.wait(self._retry_s):
            self.start()

    def stop(self) -> None:
        self._stop.set()
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        if self._connect_thread is not None:
            self._connect_thread.join(timeout=10)
        self._set_state("disconnected", "")

    # ---------------------------------------------------------------- jobs
    def submit(self, spec: JobSpec) -> None:
        client = self.client
        if client is None:
            self.job_event.emit(spec.local_id, "failed", {"code": "connection",
                                                          "message": "Not connected to the ACE Bridge daemon."})
            return
        self._jobs[spec.local_id] = spec

        def emit(lid: str, kind: str, payload: dict) -> None:
            if kind in ("done", "failed", "cancelled"):
                self._jobs.pop(lid, None)
            self.job_event.emit(lid, kind, payload)

        threading.Thread(target=run_job, args=(client, spec, emit), name=f"ace-bridge-{spec.local_id}",
                         daemon=True).start()

    def cancel(self, local_id: str) -> None:
        spec = self._jobs.get(local_id)
        if spec is not None:
            cancel_job(spec)

    def ack(self, job_id: str) -> None:
        client = self.client
        if client is not None and job_id:
            try:
                client.ack(job_id)
            except ClientError:
                pass  # unacknowledged results are redelivered later; nothing is lost

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._jobs
