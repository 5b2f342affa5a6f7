"""Send to editor (issue 17, story 7) in the real Krita GUI under Xvfb: a result in the daemon's history, sent with
the panel's API to this Krita into the document the user picked, lands there as one new layer with the stored
pixels (another document being active), the panel hears where it went, and one undo removes it. The plugin is
installed by `install_krita` into a temporary profile; the daemon is a real `ace-bridge serve --demo`."""

from __future__ import annotations

import http.cookiejar
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from ace_protocol.client import BridgeClient
from ace_protocol.images import ImagePayload
from krita_runner import REPO, install_params, install_plugin, install_runner, profile_env, require
from PIL import Image

from bridge_server.install.krita import set_enabled

pytestmark = pytest.mark.editors
ARTIFACTS = REPO / "artifacts"
RUNNER = "ace_inbox_runner"
W, H = 96, 64


def a_history_result(daemon) -> tuple[str, np.ndarray]:
    """A job made elsewhere (the CLI's client), and its stored pixels as the panel serves them."""
    image = np.zeros((H, W, 4), np.uint8)
    image[..., 0] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]
    image[..., 1], image[..., 3] = 90, 255
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 24:72] = 255
    with BridgeClient(daemon.url, daemon.token, client_id="cli-maker", reconnect_timeout=0) as client:
        handle = client.submit(
            "inpaint",
            "a green leaf",
            image=ImagePayload(W, H, "rgba8", image.tobytes()),
            mask=ImagePayload(W, H, "gray8", mask.tobytes()),
            params={"seed": 11, "steps": 2},
        )
        events = list(handle.events(timeout=120))
        assert events[-1].TYPE == "done", events[-1]
        client.ack(handle.id)
    entry = f"{handle.id}-0"
    base = f"http://127.0.0.1:{daemon.port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    req = urllib.request.Request(
        base + "/panel/api/code",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
    )
    code = json.load(opener.open(req, timeout=10))["code"]
    opener.open(f"{base}/panel/?code={code}", timeout=10).read()
    png = opener.open(f"{base}/panel/api/image/{entry}", timeout=10).read()
    return entry, np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


@pytest.mark.parametrize("install", install_params())
def test_a_result_sent_from_the_panel_lands_in_the_picked_krita_document(install, tmp_path, demo_daemon):
    install = require(install)
    entry, pixels = a_history_result(demo_daemon)
    home = tmp_path / "kh"
    pykrita = install_plugin(home)
    install_runner(pykrita, RUNNER)
    env = profile_env(home)
    rc = Path(env["XDG_CONFIG_HOME"]) / "kritarc"
    set_enabled(rc, True)
    rc.write_text(rc.read_text().replace("enable_ace_bridge=true", f"enable_ace_bridge=true\nenable_{RUNNER}=true"))
    (home / "expected.rgba").write_bytes(pixels.tobytes())
    result = home / "inbox.result.json"
    config = {
        "url": demo_daemon.url,
        "token": demo_daemon.token,
        "panel": f"http://127.0.0.1:{demo_daemon.port}",
        "entry": entry,
        "size": [W, H],
        "expected_rgba": install.path(home / "expected.rgba"),
        "result": install.path(result),
        "step_timeout_s": 90,
    }
    (home / "inbox.json").write_text(json.dumps(config))
    env.update({"ACE_GUI_TEST": install.path(home / "inbox.json"), "QT_QPA_PLATFORM": "xcb"})
    proc = install.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24 -nolisten tcp", "krita", "--nosplash"],
        env,
        timeout=300,
        binds=[home],
    )
    assert result.is_file(), f"no result from the GUI run (rc {proc.returncode}):\n{proc.stdout[-5000:]}"
    data = json.loads(result.read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"krita-{install.name}-inbox.json").write_text(json.dumps(data, indent=1))
    failed = {k: v[1] for k, v in data["checks"].items() if not v[0]}
    assert not failed, f"failed in Krita GUI: {failed}\n{proc.stdout[-3000:]}"
    for name in (
        "connected_taking_offers",
        "panel_lists_kritas_documents",
        "panel_knows_the_active_one",
        "panel_sent_it",
        "docker_inserted_it",
        "one_new_layer_on_top_of_the_picked_document",
        "the_active_document_untouched",
        "the_stored_pixels_centred_on_the_canvas",
        "panel_hears_where_it_went",
        "one_undo_removes_it",
    ):
        assert name in data["checks"], name
