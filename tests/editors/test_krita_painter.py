"""The painter's workflow in the real Krita GUI (issue 17, stories 4, 5 and 6), against a real `serve --demo`.

A painter types "make the hat red" and the daemon receives the ACE++ prompt with `{image}` (the raw form behind
"Advanced", recent prompts one click away, the connection box only while no daemon answers); picks a sketch layer as
the control layer of a local edit and the job carries it, over the edit's region, as the control image with
no_preprocess; saves the .kra, quits Krita, starts it again and reopens the file: the docker lists the same
entries, "Apply again" adds the same layer (same name, same pixels) and "Reuse prompt & seed" fills the form.
Two Krita processes per version: the restart is real.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from krita_runner import REPO, install_params, install_plugin, install_runner, profile_env, require

from bridge_server.install.krita import set_enabled

pytestmark = pytest.mark.editors
ARTIFACTS = REPO / "artifacts"
RUNNER = "ace_painter_runner"


def _run_phase(install, home: Path, phase: str, config: dict) -> dict:
    result = home / f"{phase}.result.json"
    shot = home / f"painter-{phase}.png"
    config = {**config, "phase": phase, "result": install.path(result), "screenshot": install.path(shot)}
    (home / f"{phase}.json").write_text(json.dumps(config))
    env = profile_env(home)
    env.update({"ACE_PAINTER_TEST": install.path(home / f"{phase}.json"), "QT_QPA_PLATFORM": "xcb"})
    env["ACE_BRIDGE_URL"] = config["no_daemon_url"]  # what discovery finds before the painter points at one
    proc = install.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24 -nolisten tcp", "krita", "--nosplash"],
        env,
        timeout=300,
        binds=[home],
    )
    assert result.is_file(), f"no result from Krita ({phase}, rc {proc.returncode}):\n{proc.stdout[-5000:]}"
    data = json.loads(result.read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    if shot.is_file():
        shutil.copyfile(shot, ARTIFACTS / f"krita-{install.name}-{shot.name}")
    failed = {k: v[1] for k, v in data["checks"].items() if not v[0]}
    assert not failed, f"failed in Krita ({phase}): {failed}\n{proc.stdout[-3000:]}"
    return data


def _closed_port() -> int:
    """A loopback port nothing listens on (just released), so "no local daemon" does not depend on this machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("install", install_params())
def test_painter_prompts_control_layer_and_history_after_restart(install, tmp_path, demo_daemon):
    install = require(install)
    home = tmp_path / "kh"
    pykrita = install_plugin(home)
    install_runner(pykrita, RUNNER)
    env = profile_env(home)
    kritarc = Path(env["XDG_CONFIG_HOME"]) / "kritarc"
    set_enabled(kritarc, True)
    kritarc.write_text(
        kritarc.read_text().replace("enable_ace_bridge=true", f"enable_ace_bridge=true\nenable_{RUNNER}=true")
    )
    kra = home / "hat.kra"
    config = {
        "no_daemon_url": f"ws://127.0.0.1:{_closed_port()}/v1/ws",
        "url": demo_daemon.url,
        "token": demo_daemon.token,
        "kra": install.path(kra),
        "step_timeout_s": 90,
    }

    painted = _run_phase(install, home, "paint", config)
    for name in (
        "connection_box_shown_without_daemon",
        "connection_box_hidden_with_local_daemon",
        "painter_prompt_reaches_daemon",
        "result_layer_on_top_with_pixels",
        "recent_prompt_one_click",
        "advanced_prompt_sent_as_typed",
        "control_image_is_the_sketch_over_the_region",
        "daemon_used_the_control_image",
        "kra_saved_with_history",
    ):
        assert name in painted["checks"], name
    assert kra.is_file()
    history = painted["out"]["history"]
    assert [row[2] for row in history] == ["make the hat red", "Paint the hat red, studio light", "make the hat red"]
    assert history[2][1] == "Make the hat red in {image} mask."  # the oldest entry: the first, plain-words job

    reopened = _run_phase(install, home, "reopen", {**config, "phase1": painted["out"]})
    for name in (
        "history_back_after_restart",
        "layers_back_after_restart",
        "reapply_adds_the_same_layer",
        "reuse_prompt_and_seed",
        "open_in_panel_link",
    ):
        assert name in reopened["checks"], name
