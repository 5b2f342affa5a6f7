"""`ace-bridge panel` with no daemon running starts one, then opens the panel with a one-time link."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from daemon_fixture import REPO, isolated_env

pytestmark = pytest.mark.panel


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds; ignores TIME_WAIT leftovers
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_panel_starts_the_daemon_when_none_is_running(tmp_path: Path):
    if not port_free(8717):
        pytest.skip("something already listens on the default port 8717")
    env = isolated_env(tmp_path)
    env["ACE_BRIDGE_MODELS"] = str(tmp_path / "no-models")
    opened = tmp_path / "opened-url.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys, pathlib; pathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    env["BROWSER"] = f"{sys.executable} {browser} %s"
    runtime = Path(env["ACE_BRIDGE_CONFIG_DIR"]) / "runtime.json"
    try:
        run = subprocess.run(
            [sys.executable, "-m", "bridge_server.cli", "panel", "--browser"],
            env=env,
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert "starting it" in run.stderr
        url = opened.read_text()
        assert url.startswith("http://127.0.0.1:8717/panel/?code=")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url, timeout=15) as page:  # the code is exchanged for the session cookie
            assert page.status == 200 and b"ACE Bridge" in page.read()
        with opener.open("http://127.0.0.1:8717/panel/api/state", timeout=15) as state:
            engine = json.loads(state.read())["engine"]
        assert engine["state"] == "missing" and "ace-bridge models pull" in engine.get("command", "")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=15)  # the link works once
    finally:
        stop_daemon(runtime)


def stop_daemon(runtime: Path) -> None:
    try:
        pid = json.loads(runtime.read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)  # waiting for another process to exit
    os.kill(pid, signal.SIGKILL)
