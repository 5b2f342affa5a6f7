"""Without `--ray` nothing changes: `ace-bridge serve --demo` runs a job and never imports Ray (an optional extra)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from daemon_fixture import REPO, ProcessDaemon, isolated_env
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload

pytestmark = pytest.mark.slow

# Runs the daemon as `python -m bridge_server.cli serve` would, and writes at exit which modules it ever loaded.
WRAPPER = """
import atexit, json, runpy, sys
def report(path=sys.argv[1]):
    with open(path, "w") as f:
        json.dump(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")), f)
atexit.register(report)
sys.argv = ["ace-bridge", *sys.argv[2:]]
runpy.run_module("bridge_server.cli", run_name="__main__")
"""


def test_serve_without_ray_never_imports_ray(tmp_path, tiny_model_root):
    home = tmp_path / "home"
    env = isolated_env(home)
    data = home / ".local/share/ace-bridge"
    data.mkdir(parents=True)
    (data / "demo-model").symlink_to(tiny_model_root, target_is_directory=True)
    report = tmp_path / "modules.json"
    runtime = home / ".config/ace-bridge/runtime.json"
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(report), "serve", "--demo", "--port", "0"],
        env=env,
        cwd=str(REPO),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not runtime.exists():
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)  # polling a file the daemon writes once; not a test sleep
        info = json.loads(runtime.read_text())
        token = (home / ".config/ace-bridge/token").read_text().strip()
        daemon = ProcessDaemon(
            process, info["url"], info["port"], token, runtime.parent, data, env, tmp_path / "daemon.log"
        )
        with connect(daemon, client_id="no-ray") as client:
            events = collect(
                client.submit(
                    "inpaint",
                    "x",
                    image=rgba_payload(gradient_image(32, 32)),
                    mask=gray_payload(ellipse_mask(32, 32)),
                    params={"steps": 2},
                )
            )
            assert events[-1].TYPE == "done"
            assert "ray" not in client.status().engine
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()
    assert json.loads(report.read_text()) == [], "serve without --ray must not import ray"
