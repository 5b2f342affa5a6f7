"""The control panel's "Memory tier" setting: a person overrides the tier the daemon chose, the next job loads on
that tier (its engine state and `status` say so), "auto" hands the choice back, and a name that is no tier is
refused with a clear 400 instead of breaking the next job."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request

from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload, types


def panel_session(daemon) -> urllib.request.OpenerDirector:
    """As a person does it: `ace-bridge panel` (token -> one-time code -> session cookie)."""
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
    return opener


def post_settings(daemon, opener, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{daemon.port}/panel/api/settings",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with opener.open(req, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def panel_state(daemon, opener) -> dict:
    return json.load(opener.open(f"http://127.0.0.1:{daemon.port}/panel/api/state", timeout=10))


def run_inpaint(daemon) -> None:
    client = connect(daemon)
    try:
        handle = client.submit(
            "inpaint",
            "a hat",
            image=rgba_payload(gradient_image(32, 32)),
            mask=gray_payload(ellipse_mask(32, 32)),
            params={"steps": 1},
        )
        assert types(collect(handle))[-1] == "done"
    finally:
        client.close()


def test_a_tier_picked_in_the_panel_is_the_tier_the_next_job_runs_on(thread_daemon_factory):
    daemon = thread_daemon_factory()
    opener = panel_session(daemon)
    settings = panel_state(daemon, opener)["engine"]["settings"]
    assert settings["tier"] == "auto" and {"auto", "gguf-q4", "group-offload"} <= set(settings["tiers"])

    run_inpaint(daemon)
    assert daemon.state.engine_state()["tier"] == "cpu"  # auto on this CPU machine with the tiny model

    status, reply = post_settings(daemon, opener, {"tier": "group-offload"})
    assert status == 200 and reply["settings"]["tier"] == "group-offload"
    assert daemon.state.engine_state()["state"] == "unloaded"  # reloads on the new tier at the next job
    run_inpaint(daemon)
    engine = daemon.state.engine_state()
    assert engine["tier"] == "group-offload" and engine["memory_mode"] == "group-offload"
    assert engine["tier_reason"].startswith("requested")

    status, reply = post_settings(daemon, opener, {"tier": "auto"})
    assert status == 200 and reply["settings"]["tier"] == "auto"
    run_inpaint(daemon)
    assert daemon.state.engine_state()["tier"] == "cpu"


def test_a_tier_that_does_not_exist_is_refused_and_changes_nothing(thread_daemon_factory):
    daemon = thread_daemon_factory()
    opener = panel_session(daemon)
    status, reply = post_settings(daemon, opener, {"tier": "turbo"})
    assert status == 400 and "tier must be one of auto, full" in reply["message"]
    assert panel_state(daemon, opener)["engine"]["settings"]["tier"] == "auto"
    run_inpaint(daemon)  # the next job still runs
