"""The connection to the daemon, off the UI thread.

The job life cycle itself is ace_editor's (`jobs.run_job`: a blocking client in, typed events out); this module
runs it on Python threads and hands every event to the UI thread through a Qt signal, and decodes encoded
results with QImage. The protocol client reconnects by itself with the same session, so a daemon restart
during a job only shows as "reconnecting" and the job's result still arrives; if the daemon stays away, the
worker keeps trying to connect in the background.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from .bundled import client as protocol_client
from .bundled import images, jobs
from .model import CLIENT_NAME, PLUGIN_VERSION
from .qt_compat import FORMAT_RGBA8888, QImage, QObject, Signal, qimage_bytes

#: One press of Generate (ace_editor's JobRequest; the old name stays for scripts and tests).
JobSpec = jobs.JobRequest
Emit = jobs.Emit


def decode_result(image: images.ImagePayload) -> tuple[int, int, bytes]:
    """Straight RGBA bytes of a result payload (raw on loopback; PNG/WebP from a remote daemon via QImage)."""
    if image.format in ("rgba8", "bgra8", "gray8"):
        return jobs.decode_raw(image)
    qimg = QImage.fromData(image.data)
    if qimg.isNull():
        raise ValueError(f"cannot decode a {image.format} result")
    qimg = qimg.convertToFormat(FORMAT_RGBA8888)
    data = qimage_bytes(qimg)
    stride, w, h = qimg.bytesPerLine(), qimg.width(), qimg.height()
    if stride != w * 4:
        data = b"".join(data[y * stride : y * stride + w * 4] for y in range(h))
    return w, h, data


def run_job(client: Any, spec: jobs.JobRequest, emit: jobs.Emit) -> None:
    """Submit one job and report its typed events until `JobEnded`. Never raises."""
    jobs.run_job(client, spec, emit, decode_result)


cancel_job = jobs.cancel_job


class BridgeWorker(QObject):
    """Owns one `BridgeClient`; all signals arrive on the thread the worker lives in (the UI thread)."""

    connection_changed = Signal(str, str)  # state (connecting|connected|reconnecting|disconnected|error), message
    welcome_received = Signal(object)  # dict: tasks, engine, limits, server_version
    job_event = Signal(str, object)  # local id, a typed job event (protocol message or jobs.JobEnded)
    redelivered = Signal(object)  # list of (job_id, results) that finished while Krita was away

    def __init__(
        self,
        url: str = "",
        token: str = "",
        client_id: str = "",
        editor: str = "krita",
        client_factory: Callable[..., Any] | None = None,
        retry_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.url, self.token, self.client_id, self.editor = url, token, client_id, editor
        self._factory = client_factory or protocol_client.BridgeClient
        self._retry_s = retry_s
        self.client: Any = None
        self.state = "disconnected"
        self._jobs: dict[str, jobs.JobRequest] = {}
        self._stop = threading.Event()
        self._connect_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Results sent from the panel (inbox.py sets both): `hello.offers`, and on_offer(client, offer) on the
        #: client's reader thread.
        self.offers_mode = ""
        self.on_offer: Callable[[Any, Any], None] | None = None

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
                client = self._factory(
                    self.url or None,
                    self.token or None,
                    client_id=self.client_id or None,
                    client_name=CLIENT_NAME,
                    client_version=PLUGIN_VERSION,
                    editor=self.editor,
                    previews=True,
                    **({"offers": self.offers_mode} if self.offers_mode else {}),
                )
                client.on_connection_change = self._on_client_state
                if self.on_offer is not None:
                    client.on_offer = functools.partial(self.on_offer, client)
                welcome = client.connect()
            except (protocol_client.Unauthorized, protocol_client.VersionMismatch) as exc:
                self._set_state("error", str(exc))
                return  # retrying cannot help; the user must fix the settings
            except (protocol_client.DaemonNotRunning, protocol_client.ClientError, OSError) as exc:
                self._set_state("disconnected", str(exc))
                if self._stop.wait(self._retry_s):
                    return
                continue
            # Results that finished while Krita was away, collected before any job of ours can be submitted.
            self._collect_redelivered(client, set(getattr(welcome, "pending", None) or ()))
            self.client = client
            self._set_state("connected", f"ace-bridge {welcome.server_version}")
            self.welcome_received.emit(
                {
                    "tasks": list(welcome.tasks),
                    "engine": dict(welcome.engine),
                    "limits": dict(welcome.limits),
                    "server_version": welcome.server_version,
                }
            )
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
                results = jobs.collect_results(handle, decode_result, timeout=30)
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
    def submit(self, spec: jobs.JobRequest) -> None:
        client = self.client
        if client is None:
            self.job_event.emit(
                spec.local_id,
                jobs.JobEnded(None, "failed", code="connection", message="Not connected to the ACE Bridge daemon."),
            )
            return
        self._jobs[spec.local_id] = spec

        def emit(lid: str, event: Any) -> None:
            if isinstance(event, jobs.JobEnded):
                self._jobs.pop(lid, None)
            self.job_event.emit(lid, event)

        threading.Thread(
            target=run_job, args=(client, spec, emit), name=f"ace-bridge-{spec.local_id}", daemon=True
        ).start()

    def cancel(self, local_id: str) -> None:
        spec = self._jobs.get(local_id)
        if spec is not None:
            cancel_job(spec)

    def ack(self, job_id: str) -> None:
        client = self.client
        if client is not None and job_id:
            try:
                client.ack(job_id)
            except protocol_client.ClientError:
                pass  # unacknowledged results are redelivered later; nothing is lost

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._jobs
