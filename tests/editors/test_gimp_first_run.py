"""Issue 15 item 3 inside the real GIMP 3 GUI (3.2 in CI; every GIMP install found), under Xvfb: a painter's first
use with no daemon running and no model.

The plug-in is installed by `install_gimp` (which records this checkout's `ace-bridge` beside it; the venv is
bind-mounted into the chroot at the same path). An interactive Inpaint opens the plug-in's first-run window
"ACE Bridge — not running"; Alt+S (Start ACE Bridge) runs `ace-bridge serve` detached and waits for its health
route; the window then shows the missing model, its size and licence, and says plainly that there is no usable
GPU (pointing to the demo model); Alt+D (Download) runs the daemon's model download (from the tiny model folder,
`models pull --from`, rate-limited) with a progress bar; at "ready" Alt+O (Continue) opens the ACE++ dialog, which
has no URL/token fields for a local daemon, and Return runs the job: one new layer. Driven with real key events
(gimp_scripts/gimp_first_run_driver.py). Screenshots: artifacts/gimp-<series>/; with ACE_BRIDGE_DOC_SHOTS=1 also
docs/gimp-first-run.png and docs/gimp-download.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "plugins_gimp" / "ace-bridge"))

import gimp_runner  # noqa: E402
import prerequisites  # noqa: E402

pytestmark = pytest.mark.editors
PROCEDURE = "python-fu-ace-bridge-inpaint"
RUN_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_daemon(config_dir: Path) -> None:
    try:
        pid = int(json.loads((config_dir / "runtime.json").read_text())["pid"])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)  # waiting for the process to exit
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("install", gimp_runner.install_params())
def test_start_download_and_first_job_from_gimp(install, tmp_path: Path, tiny_model_root: Path) -> None:
    install = gimp_runner.require(install)
    missing = [t for t in (install.gui, "Xvfb", "xdotool", "python3") if not install.has(t)]
    if missing:
        prerequisites.missing(f"the GIMP {install.series} first-run test needs {', '.join(missing)}")
    from acegimp_logic import ACTIONS_BY_PROCEDURE

    from bridge_server.install.gimp import install_gimp

    work = tmp_path / "gimp-first-run"
    profile = work / "profile"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACE_BRIDGE_WHEEL_CACHE", os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(REPO / ".cache/wheels"))
        install_gimp(profile)
    (profile / "gimprc").write_text("(show-welcome-dialog no)\n(show-tips no)\n(check-updates no)\n")
    models = tmp_path / "models"
    models.mkdir()
    port = _free_port()
    action = ACTIONS_BY_PROCEDURE[PROCEDURE]
    config = {
        "work_dir": install.path(work),
        "batch": install.path(HERE / "gimp_scripts" / "gimp_first_run_batch.py"),
        "gimp": install.gui,
        "procedure": PROCEDURE,
        "selection": [20, 12, 40, 30],
        "startup_s": 60,
        "start_s": 240,
        "dialog_title": f"ACE++ {action.label.rstrip('…')}",
        "results_title": "ACE++ Results",
        "deadline_s": RUN_TIMEOUT_S - 20,
    }
    (work / "config.json").write_text(json.dumps(config))
    home = profile
    env = {
        "HOME": install.path(home),
        "GIMP3_DIRECTORY": install.path(profile),
        "XDG_CONFIG_HOME": install.path(home / "xdg-config"),
        "XDG_CACHE_HOME": install.path(home / "xdg-cache"),
        "XDG_DATA_HOME": install.path(home / "xdg-data"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "NO_AT_BRIDGE": "1",
        "ACE_GIMP_UI_CONFIG": install.path(work / "config.json"),
        "PYTHONWARNINGS": "default",
        "ACE_BRIDGE_URL": f"ws://127.0.0.1:{port}/v1/ws",
        "ACE_BRIDGE_MODELS": install.path(models),
        "ACE_BRIDGE_PULL_FROM": install.path(tiny_model_root),
        "ACE_BRIDGE_PULL_RATE": "250000",
        "HF_HUB_OFFLINE": "1",
    }
    binds = [work, models, tiny_model_root, REPO, Path(sys.base_prefix)]
    if REPO not in Path(sys.prefix).parents:
        binds.append(Path(sys.prefix))
    driver = install.path(HERE / "gimp_scripts" / "gimp_first_run_driver.py")
    try:
        proc = install.run(
            ["python3", driver, install.path(work / "config.json")],
            env=env,
            timeout=RUN_TIMEOUT_S,
            binds=binds,
            cwd=install.path(work),
        )
    finally:
        _stop_daemon(home / "xdg-config" / "ace-bridge")
    artifacts = REPO / "artifacts" / f"gimp-{install.series}"
    artifacts.mkdir(parents=True, exist_ok=True)
    for png in work.glob("*.png"):
        shutil.copyfile(png, artifacts / png.name)
        if os.environ.get("ACE_BRIDGE_DOC_SHOTS") == "1" and png.name in ("gimp-first-run.png", "gimp-download.png"):
            shutil.copyfile(png, REPO / "docs" / png.name)
    gimp_log = (work / "gimp.log").read_text(errors="replace") if (work / "gimp.log").is_file() else ""
    report = json.loads((work / "driver.json").read_text()) if (work / "driver.json").is_file() else {}
    serve_log = home / "xdg-config" / "ace-bridge" / "serve.log"
    context = (
        f"rc {proc.returncode}\n--- driver ---\n{json.dumps(report, indent=1)[-3000:]}\n--- output ---\n"
        f"{proc.stdout[-2000:]}\n--- GIMP log ---\n{gimp_log[-4000:]}\n--- serve.log ---\n"
        f"{serve_log.read_text(errors='replace')[-2000:] if serve_log.is_file() else '(none)'}"
    )
    assert report and report.get("error") is None, context
    result = json.loads((work / "first_run_result.json").read_text())
    assert not result["errors"] and result["status"] == "success", f"{result}\n{context}"
    assert len(result["layers"]) == 2 and result["layers"][-1] == "bg", result
    assert (models / "FLUX.1-Fill-dev" / "model_index.json").is_file()
    assert not gimp_runner.warning_lines(gimp_log), gimp_runner.warning_lines(gimp_log)
