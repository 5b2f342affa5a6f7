"""The Krita plugin's worker (the code that runs in Krita's worker threads) against a real daemon that restarts:
the connection comes back by itself, a job that was running is reported `failed/interrupted` (never silently
lost), and the next job works. Runs with PyQt6 offscreen; the same worker runs under PyQt5 inside Krita."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("PyQt6.QtWidgets", reason="pip install PyQt6 (with torch pinned) to test the Krita worker")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins_krita"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from ace_editor.jobs import JobEnded  # noqa: E402
from ace_protocol.images import ImagePayload  # noqa: E402
from daemon_fixture import start_process_daemon  # noqa: E402

pytestmark = pytest.mark.slow


def kind_of(event) -> str:
    """`done`/`failed`/`cancelled` for the end of a job, else the protocol message's type."""
    return event.state if isinstance(event, JobEnded) else event.TYPE


def _pump(app, until, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    return until()


def test_worker_survives_daemon_restart(tmp_path, tiny_model_root):
    from ace_bridge import qt_compat
    from ace_bridge.worker import BridgeWorker, JobSpec

    app = qt_compat.QtWidgets.QApplication.instance() or qt_compat.QtWidgets.QApplication(["test"])
    home = tmp_path / "daemon-home"
    daemon = start_process_daemon(home, tiny_root=tiny_model_root)
    worker = BridgeWorker(daemon.url, daemon.token, "krita-resume-test", retry_s=0.2)
    states, events = [], []
    worker.connection_changed.connect(lambda s, m: states.append(s))
    worker.job_event.connect(lambda lid, event: events.append((lid, kind_of(event), event)))
    restarted = None
    try:
        worker.start()
        assert _pump(app, lambda: worker.state == "connected"), states
        image = ImagePayload(64, 64, "rgba8", bytes((90, 120, 200, 255)) * (64 * 64))
        mask = ImagePayload(64, 64, "gray8", bytes(255 if 16 <= i % 64 < 48 else 0 for i in range(64 * 64)))
        worker.submit(JobSpec("long", "inpaint", "a vase", image, mask, [], {"steps": 30, "seed": 1}))
        assert _pump(app, lambda: any(k in ("progress", "failed", "done") for _, k, _ in events)), events
        daemon.stop()
        restarted = start_process_daemon(home, "--port", str(daemon.port), tiny_root=tiny_model_root)
        assert _pump(app, lambda: any(lid == "long" and k in ("failed", "done") for lid, k, _ in events), 120), (
            states,
            events[-3:],
            (restarted or daemon).log()[-3000:],
        )
        final = [(k, e) for lid, k, e in events if lid == "long"][-1]
        assert final[0] == "done" or final[1].code == "interrupted", final
        assert _pump(app, lambda: worker.state == "connected" and worker.client is not None, 60), states
        assert "reconnecting" in states or "disconnected" in states
        worker.submit(JobSpec("after", "inpaint", "a vase", image, mask, [], {"steps": 2, "seed": 2}))
        assert _pump(app, lambda: any(lid == "after" and k in ("failed", "done") for lid, k, _ in events), 120)
        final = [(k, e) for lid, k, e in events if lid == "after"][-1]
        assert final[0] == "done", final
        assert final[1].results[0].width == 64
    finally:
        worker.stop()
        (restarted or daemon).stop()
