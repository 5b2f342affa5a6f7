"""The docker in the real Krita GUI under Xvfb, with the plugin installed by `install_krita` into a temporary
profile, against a real `ace-bridge serve --demo`.

Story covered (issue 4): the docker exists and lists the daemon's tasks; Generate (through the action behind
Ctrl+Enter) produces a new layer on top named with task and seed; one undo removes it; a result lands in the
document it came from although another document became active; Cancel during a job leaves no layer; the history
shows thumbnails; count 2 gives one group (first visible) that one undo removes. A screenshot of the docker goes to artifacts/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from krita_runner import REPO, install_params, install_plugin, install_runner, profile_env, require

from bridge_server.install.krita import set_enabled

pytestmark = pytest.mark.editors
ARTIFACTS = REPO / "artifacts"


@pytest.mark.parametrize("install", install_params())
def test_docker_generate_undo_route_cancel(install, tmp_path, demo_daemon):
    install = require(install)
    home = tmp_path / "kh"
    pykrita = install_plugin(home)
    install_runner(pykrita, "ace_gui_runner")
    env = profile_env(home)
    set_enabled(Path(env["XDG_CONFIG_HOME"]) / "kritarc", True)  # ace_bridge
    rc_text = (
        (Path(env["XDG_CONFIG_HOME"]) / "kritarc")
        .read_text()
        .replace("enable_ace_bridge=true", "enable_ace_bridge=true\nenable_ace_gui_runner=true")
    )
    (Path(env["XDG_CONFIG_HOME"]) / "kritarc").write_text(rc_text)
    result = home / "gui.result.json"
    shot = home / "docker.png"
    config = {
        "url": demo_daemon.url,
        "token": demo_daemon.token,
        "result": install.path(result),
        "screenshot": install.path(shot),
        "step_timeout_s": 90,
    }
    (home / "gui.json").write_text(json.dumps(config))
    env.update({"ACE_GUI_TEST": install.path(home / "gui.json"), "QT_QPA_PLATFORM": "xcb"})
    proc = install.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24 -nolisten tcp", "krita", "--nosplash"],
        env,
        timeout=240,
        binds=[home],
    )
    assert result.is_file(), f"no result from the GUI run (rc {proc.returncode}):\n{proc.stdout[-5000:]}"
    data = json.loads(result.read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    for png in (shot, home / "docker-window.png"):
        if png.is_file():
            shutil.copyfile(png, ARTIFACTS / f"krita-{install.name}-{png.name}")
    (ARTIFACTS / f"krita-{install.name}-gui.json").write_text(json.dumps(data, indent=1))
    failed = {k: v[1] for k, v in data["checks"].items() if not v[0]}
    assert not failed, f"failed in Krita GUI: {failed}\n{proc.stdout[-3000:]}"
    for name in (
        "docker_exists",
        "generate_new_layer_on_top",
        "cancel_leaves_no_layer",
        "result_lands_in_origin_document",
        "screenshot_saved",
        "undo_removes_layer",
        "count2_group_one_undo",
    ):
        assert name in data["checks"], name
    # Finding pinned: the result layer is built off-stack and added with one addChildNode, so one undo removes it.
    assert data["checks"]["undo_steps"][1] == "1", data["checks"]["undo_steps"]
