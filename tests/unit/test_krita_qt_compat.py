"""qt_compat against PyQt6 (what Krita 6 ships), offscreen, plus the worker's event flow over Qt signals with a
scripted client. PyQt5 is covered inside real Krita 5 by tests/editors."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import pytest
from ace_editor.jobs import JobEnded
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Accepted, Cancelled, Done, Progress, Queued, Result, Started, Welcome

pytest.importorskip("PyQt6.QtWidgets", reason="pip install PyQt6 (with torch pinned) to test the Krita 6 path")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins_krita"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def qt(request):
    old = os.environ.get("ACE_BRIDGE_QT")
    os.environ["ACE_BRIDGE_QT"] = "6"
    for name in [m for m in sys.modules if m.startswith("ace_bridge.qt_compat") or m == "ace_bridge.worker"]:
        del sys.modules[name]
    qt_compat = importlib.import_module("ace_bridge.qt_compat")
    app = qt_compat.QtWidgets.QApplication.instance() or qt_compat.QtWidgets.QApplication(["test"])
    yield qt_compat, app
    if old is None:
        os.environ.pop("ACE_BRIDGE_QT", None)
    else:
        os.environ["ACE_BRIDGE_QT"] = old


def test_picks_pyqt6_and_scoped_enums(qt):
    qt_compat, _ = qt
    assert qt_compat.QT_MAJOR == 6
    assert qt_compat.QtCore.__name__ == "PyQt6.QtCore"
    assert qt_compat.QAction.__module__.startswith("PyQt6.QtGui")  # QAction moved to QtGui in Qt 6
    assert qt_compat.ALIGN_CENTER == qt_compat.Qt.AlignmentFlag.AlignCenter
    assert qt_compat.enum("Qt.ItemDataRole.UserRole") == qt_compat.Qt.ItemDataRole.UserRole
    with pytest.raises(KeyError):
        qt_compat.enum("Nope.X.Y")


def test_image_bytes_round_trip(qt):
    qt_compat, _ = qt
    data = bytes(range(256)) * 3 * 4  # 48 x 16 RGBA
    img = qt_compat.qimage_from_bytes(data, 48, 16, qt_compat.FORMAT_RGBA8888)
    assert (img.width(), img.height()) == (48, 16)
    assert qt_compat.qimage_bytes(img) == data


def test_decode_png_result(qt):
    qt_compat, _ = qt
    from ace_protocol.images import ImagePayload

    worker = importlib.import_module("ace_bridge.worker")
    raw = bytes((10, 20, 30, 128)) * (5 * 3)
    img = qt_compat.qimage_from_bytes(raw, 5, 3, qt_compat.FORMAT_RGBA8888)
    buf = qt_compat.QtCore.QBuffer()
    buf.open(qt_compat.QtCore.QIODevice.OpenModeFlag.WriteOnly)
    assert img.save(buf, "PNG")
    w, h, rgba = worker.decode_result(ImagePayload(5, 3, "png", bytes(buf.data())))
    assert (w, h, rgba) == (5, 3, raw)
    assert worker.decode_result(ImagePayload(1, 1, "bgra8", b"\x01\x02\x03\x04")) == (1, 1, b"\x03\x02\x01\x04")


class _Handle:
    def __init__(self, events):
        self.id, self.position, self.seed = "job-1", 2, 5
        self._events, self.cancelled = events, False

    def events(self, timeout=None):
        yield from self._events

    def cancel(self):
        self.cancelled = True


class _Client:
    """Scripted stand-in for BridgeClient (same method names; the protocol's own typed events)."""

    def __init__(self, *args, **kw):
        self.acked = []
        self.on_connection_change = None
        self.handle = _Handle(
            [
                Queued(job_id="job-1", position=1),
                Started(job_id="job-1"),
                Progress(job_id="job-1", step=1, total=2, eta_s=1.0),
                Result(
                    job_id="job-1",
                    index=0,
                    count=1,
                    seed=5,
                    image=ImagePayload(2, 1, "rgba8", b"\x01\x02\x03\x04" * 2),
                    provenance={"model": "tiny"},
                ),
                Done(job_id="job-1"),
            ]
        )

    def connect(self):
        return Welcome(
            server_version="0.1.0",
            protocol_version=1,
            session="s",
            limits={},
            engine={},
            tasks=[{"name": "inpaint", "params": []}],
        )

    def fetch_unacknowledged(self, wait=1.0):
        return []

    def submit(self, task, prompt, **kw):
        self.submitted = (task, prompt, kw)
        return self.handle

    def ack(self, job_id):
        self.acked.append(job_id)

    def close(self):
        pass


def _pump(app, until, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.005)
    return until()


def test_worker_delivers_events_on_the_ui_thread(qt):
    qt_compat, app = qt
    worker_mod = importlib.import_module("ace_bridge.worker")
    client = _Client()
    worker = worker_mod.BridgeWorker(client_factory=lambda *a, **k: client, retry_s=0.05)
    states, welcomes, events = [], [], []
    worker.connection_changed.connect(lambda s, m: states.append(s))
    worker.welcome_received.connect(welcomes.append)
    worker.job_event.connect(lambda lid, event: events.append((lid, event, qt_compat.QThread.currentThread())))
    worker.start()
    assert _pump(app, lambda: welcomes), states
    assert welcomes[0]["tasks"][0]["name"] == "inpaint" and "connected" in states
    spec = worker_mod.JobSpec("k1", "inpaint", "a vase", None, None, [], {"steps": 2})
    worker.submit(spec)
    assert _pump(app, lambda: events and isinstance(events[-1][1], JobEnded))
    kinds = [type(e[1]).__name__ for e in events]
    assert kinds == ["Accepted", "Queued", "Started", "Progress", "Result", "JobEnded"]
    assert all(e[2] == app.thread() for e in events)  # delivered on the UI thread
    assert events[-1][1].state == "done"
    results = events[-1][1].results
    assert results[0].rgba == b"\x01\x02\x03\x04" * 2 and results[0].provenance == {"model": "tiny"}
    worker.ack("job-1")
    assert client.acked == ["job-1"]
    worker.stop()


def test_cancel_before_accept_cancels_once_accepted(qt):
    worker_mod = importlib.import_module("ace_bridge.worker")
    client = _Client()
    client.handle._events = [Cancelled(job_id="job-1")]
    spec = worker_mod.JobSpec("k2", "inpaint", "", None, None, [], {})
    worker_mod.cancel_job(spec)
    seen = []
    worker_mod.run_job(client, spec, lambda lid, event: seen.append(event))
    assert client.handle.cancelled and isinstance(seen[0], Accepted) and seen[-1].state == "cancelled"


def test_submit_refused_becomes_failed_event(qt):
    worker_mod = importlib.import_module("ace_bridge.worker")
    from ace_protocol.client import DaemonNotRunning

    class Refusing(_Client):
        def submit(self, *a, **k):
            raise DaemonNotRunning("ws://127.0.0.1:1/v1/ws")

    seen = []
    worker_mod.run_job(
        Refusing(), worker_mod.JobSpec("k3", "inpaint", "", None, None, [], {}), lambda lid, event: seen.append(event)
    )
    assert seen[0].state == "failed" and "not running" in seen[0].message


def _jpeg(qt_compat, w: int, h: int) -> bytes:
    img = qt_compat.qimage_from_bytes(bytes((200, 40, 30, 255)) * (w * h), w, h, qt_compat.FORMAT_RGBA8888)
    buf = qt_compat.QtCore.QBuffer()
    buf.open(qt_compat.QtCore.QIODevice.OpenModeFlag.WriteOnly)
    assert img.save(buf, "JPEG", 70)
    return bytes(buf.data())


def test_preview_pixmap_from_jpeg(qt):
    qt_compat, _ = qt
    pixmap = qt_compat.preview_pixmap(_jpeg(qt_compat, 256, 128), 160)
    assert pixmap is not None and not pixmap.isNull()
    assert (pixmap.width(), pixmap.height()) == (160, 80)  # scaled down, aspect kept
    small = qt_compat.preview_pixmap(_jpeg(qt_compat, 40, 30), 160)
    assert (small.width(), small.height()) == (40, 30)  # never scaled up
    assert qt_compat.preview_pixmap(b"", 160) is None
    assert qt_compat.preview_pixmap(b"not an image", 160) is None


def test_progress_preview_reaches_the_ui_event(qt):
    qt_compat, _ = qt
    from ace_protocol.images import ImagePayload

    worker_mod = importlib.import_module("ace_bridge.worker")
    jpeg = _jpeg(qt_compat, 32, 16)
    client = _Client()
    client.handle._events = [
        Progress(job_id="job-1", step=4, total=8, eta_s=1.0, preview=ImagePayload(32, 16, "jpeg", jpeg)),
        Progress(job_id="job-1", step=5, total=8, eta_s=0.5),
        Cancelled(job_id="job-1"),
    ]
    seen = []
    worker_mod.run_job(
        client, worker_mod.JobSpec("k4", "inpaint", "", None, None, [], {}), lambda lid, event: seen.append(event)
    )
    progress = [e for e in seen if isinstance(e, Progress)]
    assert bytes(progress[0].preview.data) == jpeg and progress[1].preview is None
