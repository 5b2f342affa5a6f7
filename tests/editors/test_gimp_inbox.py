"""Send to editor for GIMP (issue 17, story 7), in real GIMP 3.0 and 3.2: GIMP's plug-in runs only while a
procedure runs, so a result a panel user sends to it is kept by the daemon; the next Fetch Finished Results puts it
into the image it was made for, at its place, with the stored pixels and its provenance, and the panel hears it."""

from __future__ import annotations

import http.cookiejar
import io
import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "plugins_gimp" / "ace-bridge"))

import gimp_runner  # noqa: E402

pytestmark = pytest.mark.editors
REGION = (10, 8, 32, 32)


class Panel:
    """Signed in as `ace-bridge panel` does: token -> one-time code -> session cookie."""

    def __init__(self, daemon) -> None:
        self.base = f"http://127.0.0.1:{daemon.port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        req = urllib.request.Request(
            self.base + "/panel/api/code",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
        )
        code = json.load(self.opener.open(req, timeout=10))["code"]
        self.opener.open(f"{self.base}/panel/?code={code}", timeout=10).read()

    def get(self, path: str) -> bytes:
        return self.opener.open(self.base + path, timeout=30).read()

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return json.load(self.opener.open(req, timeout=30))


def gimps_earlier_result(daemon, client_id: str) -> str:
    """A job as GIMP's plug-in makes one (its client id, its label naming image and region), left in history."""
    from ace_editor import daemon_history, inbox
    from ace_protocol.client import BridgeClient
    from ace_protocol.images import ImagePayload

    client = BridgeClient(daemon.url, daemon.token, client_id=client_id, editor="gimp 3", offers=inbox.LATER)
    client.connect()
    try:
        w, h = REGION[2:]
        job = client.submit(
            "inpaint",
            "a blue kite",
            image=ImagePayload(w, h, "rgba8", bytes([120, 60, 30, 255]) * (w * h)),
            mask=ImagePayload(w, h, "gray8", b"\xff" * (w * h)),
            params={"seed": 9, "steps": 2},
            label=daemon_history.job_label("GIMP", "poster.xcf", REGION),
        )
        kinds = [event.TYPE for event in job.events(timeout=120)]
        assert kinds[-1] == "done", kinds
        client.ack(job.id)
        return str(job.id)
    finally:
        client.close()


@pytest.mark.parametrize("install", gimp_runner.install_params())
def test_a_result_sent_to_gimp_waits_for_fetch_and_goes_home(install, tmp_path, tiny_model_root):
    install = gimp_runner.require(install)
    from acegimp_logic import STATE_FILE, ProfileState
    from daemon_fixture import start_process_daemon

    from bridge_server.install.gimp import install_gimp

    work = tmp_path / "gimp"
    profile = work / "profile"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACE_BRIDGE_WHEEL_CACHE", os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(REPO / ".cache/wheels"))
        plugin_dir = install_gimp(profile)
    daemon = start_process_daemon(work / "home", tiny_root=tiny_model_root)
    try:
        client_id = ProfileState(profile / STATE_FILE).client_id
        with pytest.MonkeyPatch.context() as mp:  # the resume secret lands where the plug-in looks for it
            mp.setenv("ACE_BRIDGE_CONFIG_DIR", str(profile / "xdg-config" / "ace-bridge"))
            job_id = gimps_earlier_result(daemon, client_id)
        entry = f"{job_id}-0"
        panel = Panel(daemon)
        sent = panel.post("/panel/api/send", {"entry": entry, "client_id": client_id})
        assert sent["ok"] and sent["offer"]["state"] == "kept" and "Kept for GIMP" in sent["message"], sent
        expected = np.asarray(Image.open(io.BytesIO(panel.get(f"/panel/api/image/{entry}"))).convert("RGBA"))
        (work / "expected.rgba").write_bytes(expected.tobytes())
        config = {
            "url": daemon.url,
            "token": daemon.token,
            "work_dir": str(work),
            "region": list(REGION),
            "job_id": job_id,
            "expected_rgba": str(work / "expected.rgba"),
            "out": str(work / "checks.json"),
            "plugin_dir": str(plugin_dir),
        }
        (work / "config.json").write_text(json.dumps(config))
        rc, output = gimp_runner.run_gimp_batch(
            HERE / "gimp_scripts" / "gimp_inbox_checks.py",
            profile,
            200,
            env={"ACE_GIMP_CHECKS_CONFIG": str(work / "config.json")},
            binds=[work],
            install=install,
        )
        answered = json.loads(panel.get("/panel/api/state"))["offers"][0]
    finally:
        daemon.stop()
    try:
        checks = json.loads((work / "checks.json").read_text())
    except (OSError, ValueError):
        pytest.fail(f"no checks from GIMP (rc {rc}):\n{output[-4000:]}")
    failed = {k: v[1] for k, v in checks.items() if not v[0]}
    assert not failed, f"failed in GIMP: {failed}\n{output[-3000:]}"
    for name in (
        "fetch_inserted_the_sent_result",
        "the_current_image_untouched",
        "one_new_layer_on_top_of_its_own_image",
        "at_the_place_it_was_made_for",
        "the_stored_pixels",
        "with_its_provenance",
        "taken_once",
    ):
        assert name in checks, name
    assert answered["state"] == "inserted" and answered["inserted_into"] == "poster.xcf", answered
