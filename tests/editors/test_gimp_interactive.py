"""The GIMP 3 plug-in's interactive path in the real GIMP 3.0 and 3.2 GUIs (gimp-3.x under Xvfb; trixie and sid
chroots on bookworm) against a real `ace-bridge serve --demo`.

The plug-in is installed by `install_gimp` into a throw-away GIMP3_DIRECTORY; the daemon's URL and token reach it
through ACE_BRIDGE_URL / ACE_BRIDGE_TOKEN. gimp_scripts/gimp_ui_batch.py runs Inpaint in Gimp.RunMode.INTERACTIVE
six times on displayed images with a selection; gimp_scripts/gimp_ui_driver.py answers the windows with real key
events (xdotool, XTEST). Story covered:
1. the procedure dialog appears; Return (OK) runs the job with progress; one new layer on top at the context region,
   with the dialog's values in its provenance; a screenshot of the dialog goes to artifacts/gimp/;
2. the next use starts from the values of the previous one (the batch passes none: the job runs with the previous
   prompt, seed and steps), and GIMP saved them in the profile's `.last` settings file;
3. both 9-step jobs show the daemon's previews (after steps 4 and 8) in their progress windows, as the plug-in
   logs with ACE_BRIDGE_DEBUG;
4. preview, then apply (issue 17): after each finished job the results window shows the results as thumbnails, the
   selected one previewed on the canvas; with three variations, Down picks the second and Return applies it as
   the one result layer; Escape on the results window discards (no layer); a screenshot of the window goes to
   artifacts/gimp/gimp-results.png (and docs/ with ACE_BRIDGE_DOC_SHOTS=1);
5. Escape on the dialog cancels: status cancel, no layer;
6. Escape on the progress window (queue paused, so the job is still waiting) cancels the job: status cancel,
   no layer, and the daemon reports the job cancelled; the cancelled job is acknowledged, so it leaves the
   profile's pending jobs and the daemon's queue;
7. GIMP's log holds no deprecation or duplicate-mnemonic warnings (PYTHONWARNINGS=default).
"""

from __future__ import annotations

import json
import os
import shutil
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

TOOLS = ("Xvfb", "xdotool", "python3")
ARTIFACTS_ROOT = REPO / "artifacts"
PROCEDURE = "python-fu-ace-bridge-inpaint"
SELECTION = [20, 12, 40, 30]
# 9 steps: the daemon sends previews after steps 4 and 8 (every 4th, never the last).
FIRST = {"prompt": "a red apple, interactive", "seed": 7, "steps": 9, "count": 1, "padding": 4, "feather": 3}
RUN_TIMEOUT_S = 200
EXPAND = (16, 0, 8, 0)  # left, top, right, bottom
HISTORY_JOB = {"prompt": "a straw hat", "seed": 21, "steps": 2, "count": 1, "padding": 4}
RESULTS_TITLE = "ACE++ Results"


def require_gui_tools(install: gimp_runner.GimpInstall) -> None:
    missing = [t for t in (install.gui, *TOOLS) if not install.has(t)]
    if missing:
        prerequisites.missing(
            f"the GIMP {install.series} GUI test needs {', '.join(missing)} in {install.where}: "
            f"run .ci/steps/{gimp_runner.STEP_FOR_VERSION.get(install.series, '*_chroot.sh')}"
        )


@pytest.mark.parametrize("install", gimp_runner.install_params())
def test_dialog_progress_remembered_values_and_cancel(install, tmp_path: Path, demo_daemon) -> None:
    install = gimp_runner.require(install)
    require_gui_tools(install)
    from ace_protocol.client import BridgeClient
    from acegimp_logic import ACTIONS_BY_PROCEDURE, PARASITE_NAME, STATE_FILE

    from bridge_server.install.gimp import install_gimp

    action = ACTIONS_BY_PROCEDURE[PROCEDURE]
    work = tmp_path / "gimp-ui"
    profile = work / "profile"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACE_BRIDGE_WHEEL_CACHE", os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(REPO / ".cache/wheels"))
        install_gimp(profile)
    # A first start shows GIMP 3's welcome dialog; a user profile would have answered it once.
    # GIMP 3.2 reads GIMP3_DIRECTORY too, so the profile folder's name does not matter here.
    (profile / "gimprc").write_text("(show-welcome-dialog no)\n(show-tips no)\n(check-updates no)\n")
    runs = [
        {"name": "first", "props": FIRST, "dialog": "ok", "shot": "dialog-first.png"},
        {"name": "remembered", "props": {}, "dialog": "ok", "shot": "dialog-remembered.png"},
        # Three variations: Down picks the second thumbnail (previewed on the canvas), Return applies it.
        {
            "name": "variations",
            "props": {},
            "dialog": "ok",
            # In the dialog, as a user would: Images (Alt+I) 3, Steps (Alt+T) 2, OK (Alt+O); later runs remember them.
            "dialog_keys": ["alt+i", "ctrl+a", "type:3", "alt+t", "ctrl+a", "type:2"],
            "results_keys": ["Down", "Return"],
            "results_shot": "gimp-results.png",
        },
        {"name": "discard", "props": {}, "dialog": "ok", "results_keys": ["Escape"]},
        # Expand Canvas: 16 px on the left, 8 on the right (L_eft, Ri_ght), 2 steps; its result previewed, applied.
        {
            "name": "expand",
            "procedure": "python-fu-ace-bridge-expand-canvas",
            "title": "ACE++ Expand Canvas",
            "props": {},
            "dialog": "ok",
            "dialog_keys": [
                *("alt+e", "ctrl+a", f"type:{EXPAND[0]}"),
                *("alt+g", "ctrl+a", f"type:{EXPAND[2]}"),
                *("alt+t", "ctrl+a", "type:2"),
            ],
            "results_keys": ["Return"],
            "results_shot": "gimp-expand-results.png",
        },
        # Recent Results on a saved image with one earlier result in the daemon's history: its window lists it,
        # Return adds it again.
        {
            "name": "recent",
            "procedure": "python-fu-ace-bridge-recent-results",
            "setup": "history",
            "dialog": "none",
            "results_title": "ACE++ Recent Results",
            "results_keys": ["Return"],
            "results_shot": "gimp-recent-results.png",
        },
        {"name": "dialog_cancel", "props": {}, "dialog": "cancel"},
        {"name": "progress_cancel", "props": {}, "dialog": "ok", "progress": "cancel", "progress_shot": "progress.png"},
    ]
    config = {
        "work_dir": install.path(work),
        "batch": install.path(HERE / "gimp_scripts" / "gimp_ui_batch.py"),
        "gimp": install.gui,
        "procedure": PROCEDURE,
        "parasite": PARASITE_NAME,
        "selection": SELECTION,
        "runs": runs,
        "dialog_title": f"ACE++ {action.label.rstrip('…')}",
        "results_title": RESULTS_TITLE,
        "history_job": HISTORY_JOB,
        "token": demo_daemon.token,
        "panel_base": f"http://127.0.0.1:{demo_daemon.port}",
        "startup_s": 40,
        "shot_x": 830,
        "deadline_s": RUN_TIMEOUT_S - 10,
    }
    (work / "config.json").write_text(json.dumps(config))
    env = {
        "HOME": install.path(profile),
        "GIMP3_DIRECTORY": install.path(profile),
        "XDG_CONFIG_HOME": install.path(profile / "xdg-config"),
        "XDG_CACHE_HOME": install.path(profile / "xdg-cache"),
        "XDG_DATA_HOME": install.path(profile / "xdg-data"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "ACE_BRIDGE_URL": demo_daemon.url,
        "ACE_BRIDGE_TOKEN": demo_daemon.token,
        "ACE_GIMP_UI_CONFIG": install.path(work / "config.json"),
        "NO_AT_BRIDGE": "1",
        "ACE_BRIDGE_DEBUG": "1",  # the plug-in then logs each preview it put in its progress window
        "PYTHONWARNINGS": "default",  # show every DeprecationWarning the plug-in triggers
    }
    driver = install.path(HERE / "gimp_scripts" / "gimp_ui_driver.py")
    start = time.monotonic()
    proc = install.run(
        ["python3", driver, install.path(work / "config.json")],
        env=env,
        timeout=RUN_TIMEOUT_S,
        binds=[work],
        cwd=install.path(work),
    )
    elapsed = time.monotonic() - start

    # artifacts/gimp/ for the oldest GIMP (as before), artifacts/gimp-3.2/ etc. for the others.
    first_install = gimp_runner.gimp_installs()[:1] == [install]
    artifacts = ARTIFACTS_ROOT / ("gimp" if first_install else f"gimp-{install.series}")
    artifacts.mkdir(parents=True, exist_ok=True)
    for png in sorted(work.glob("*.png")):
        shutil.copyfile(png, artifacts / png.name)
    gimp_log = (work / "gimp.log").read_text(errors="replace") if (work / "gimp.log").is_file() else ""
    (artifacts / "interactive-gimp.log").write_text(gimp_log)
    report = json.loads((work / "driver.json").read_text()) if (work / "driver.json").is_file() else {}
    context = (
        f"rc {proc.returncode}, {elapsed:.1f} s\n--- driver ---\n{json.dumps(report, indent=1)[-4000:]}\n"
        f"--- run output ---\n{proc.stdout[-2000:]}\n--- GIMP log ---\n{gimp_log[-4000:]}"
    )
    assert proc.returncode == 0 and report, context
    assert report.get("error") is None, context
    results = json.loads((work / "ui_results.json").read_text())
    assert not results["errors"], "\n".join(results["errors"]) + context
    out = results["runs"]
    (artifacts / "interactive-results.json").write_text(json.dumps({"runs": out, "driver": report}, indent=1))
    assert (artifacts / "dialog-first.png").is_file(), sorted(p.name for p in work.glob("*.png"))

    # 1. OK in the dialog: one new layer on top, at the selection plus padding, made with the dialog's values.
    first = out["first"]
    assert first["status"] == "success" and len(first["new"]) == 1 and first.get("value") == 1, first
    layer = first["new"][0]
    x, y, w, h = SELECTION
    pad = FIRST["padding"]
    assert layer["on_top"] and layer["offsets"] == [x - pad, y - pad], layer
    assert layer["size"] == [w + 2 * pad, h + 2 * pad], layer
    prov = layer["provenance"]
    assert prov["prompt"] == FIRST["prompt"] and prov["seed"] == FIRST["seed"], prov
    assert FIRST["prompt"][:10] in layer["name"], layer["name"]

    # 2. The next use starts from the previous values, which GIMP saved in the profile.
    again = out["remembered"]
    assert again["status"] == "success" and len(again["new"]) == 1, again
    prov2 = again["new"][0]["provenance"]
    assert (prov2["prompt"], prov2["seed"]) == (FIRST["prompt"], FIRST["seed"]), prov2
    assert again["new"][0]["offsets"] == layer["offsets"], again
    saved = sorted(profile.glob(f"plug-in-settings/*{PROCEDURE}.last"))
    assert saved and FIRST["prompt"] in saved[0].read_text(errors="replace"), sorted(
        str(p.relative_to(profile)) for p in profile.rglob("*") if p.is_file()
    )[:60]

    # 3. Both finished jobs showed where the picture was heading in their progress windows (steps 4 and 8 of 9).
    shown = [line for line in gimp_log.splitlines() if "ace-bridge: preview shown" in line]
    assert len(shown) == 4, f"two previews in each of the two finished jobs, got {shown}" + context

    # 4. Preview, then apply: three variations in the results window; the second one picked and applied is the one
    #    result layer (not a group), with its own seed; Escape on the results window discards: nothing added.
    varied = out["variations"]
    assert varied["status"] == "success" and len(varied["new"]) == 1, varied
    picked = varied["new"][0]
    assert picked["on_top"] and not picked["is_group"] and picked["name"].startswith("[ACE++]"), picked
    assert picked["provenance"]["seed"] == FIRST["seed"] + 1 and picked["provenance"]["index"] == 1, picked
    assert picked["offsets"] == layer["offsets"], picked
    assert [s.get("results_closed") for s in report["steps"] if s["name"] == "variations"] == [True], report
    assert (artifacts / "gimp-results.png").is_file()
    if os.environ.get("ACE_BRIDGE_DOC_SHOTS") == "1" and first_install:
        shutil.copyfile(artifacts / "screen-gimp-results.png", REPO / "docs" / "gimp-results.png")
    dropped = out["discard"]
    assert dropped["status"] == "success" and dropped["new"] == [] and dropped["layers"] == ["bg"], dropped

    # 4b. Expand Canvas: the canvas grew by 16 + 8 px, the old picture moved with it, one result layer covers it all.
    grown = out["expand"]
    width = 96 + EXPAND[0] + EXPAND[2]
    assert grown["status"] == "success" and grown["canvas"] == [width, 64], grown
    assert grown["offsets"]["bg"] == [EXPAND[0], EXPAND[1]] and len(grown["new"]) == 1, grown
    made = grown["new"][0]
    assert made["offsets"] == [0, 0] and made["size"] == [width, 64] and made["on_top"], made
    assert made["provenance"]["params"]["expand"] == list(EXPAND), made["provenance"]

    # 4c. Recent Results: the saved image's earlier result comes back from the daemon's history at its place.
    back = out["recent"]
    assert back["status"] == "success" and len(back["new"]) == 1, back
    again = back["new"][0]
    assert again["provenance"]["seed"] == HISTORY_JOB["seed"] and again["provenance"]["task"] == "inpaint", again
    assert again["offsets"] == [x - HISTORY_JOB["padding"], y - HISTORY_JOB["padding"]], again

    # 5. Escape on the dialog: cancelled, nothing added.
    cancelled = out["dialog_cancel"]
    assert cancelled["status"] == "cancel" and cancelled["new"] == [] and cancelled["layers"] == ["bg"], cancelled

    # 6. Escape on the progress window while the job waits: cancelled, nothing added, the job cancelled.
    stopped = out["progress_cancel"]
    assert [s.get("progress_closed") for s in report["steps"] if s["name"] == "progress_cancel"] == [True], report
    assert stopped["status"] == "cancel" and stopped["new"] == [] and stopped["layers"] == ["bg"], stopped
    probe = BridgeClient(demo_daemon.url, demo_daemon.token, client_name="test-probe")
    probe.connect()
    try:
        status = probe.status()
    finally:
        probe.close()
    assert not status.queue and not status.paused, status
    # ... and acknowledged: no job stays pending in the profile (else "Fetch finished results" would bring the
    # cancelled job back as an error).
    pending = json.loads((profile / STATE_FILE).read_text())["pending"]
    assert pending == {}, pending

    # 7. No deprecation or duplicate-mnemonic warnings from the plug-in (GIMP 3.2: Python 3.14, PyGObject 3.58).
    warned = gimp_runner.warning_lines(gimp_log)
    assert not warned, f"GIMP {install.version}:\n" + "\n".join(warned[:20])
