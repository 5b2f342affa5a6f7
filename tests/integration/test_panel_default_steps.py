"""The control panel's "Default steps" reaches editor jobs: a Krita-shaped and a GIMP-shaped job, built by each
plug-in's own logic from its untouched settings, leave `steps` out, so the daemon runs them at the panel's value
(the bug was that both plug-ins always sent their own 28)."""

from __future__ import annotations

import http.cookiejar
import json
import sys
import urllib.request
from pathlib import Path

from ace_editor import jobs
from ace_protocol.client import BridgeClient
from ace_protocol.geometry import Bounds, Extent
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Progress

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO / "plugins_krita", REPO / "plugins_gimp" / "ace-bridge"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import acegimp_logic as gimp  # noqa: E402
from ace_bridge import model as krita  # noqa: E402

PANEL_STEPS = 3
W = H = 32


def set_default_steps(daemon, steps: int) -> dict:
    """As a person does it: `ace-bridge panel` (token -> one-time code -> session cookie), then the setting."""
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
    req = urllib.request.Request(
        base + "/panel/api/settings",
        data=json.dumps({"default_steps": steps}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    return json.load(opener.open(req, timeout=10))


def run(client: BridgeClient, task: str, params: dict) -> jobs.JobEnded:
    image = ImagePayload(W, H, "rgba8", bytes((90, 120, 200, 255)) * (W * H))
    mask = ImagePayload(W, H, "gray8", b"\xff" * (W * H))
    events: list = []
    jobs.run_job(client, jobs.JobRequest("t", task, "a vase", image, mask, [], params), lambda _, e: events.append(e))
    ended = events[-1]
    assert isinstance(ended, jobs.JobEnded) and ended.state == "done", events[-3:]
    client.ack(ended.job_id)
    totals = {e.total for e in events if isinstance(e, Progress)}
    assert totals == {PANEL_STEPS}, totals  # the engine ran the panel's number of steps
    return ended


def test_the_panels_default_steps_reach_krita_and_gimp_jobs(thread_daemon_factory):
    daemon = thread_daemon_factory()
    set_default_steps(daemon, PANEL_STEPS)
    client = BridgeClient(daemon.url, daemon.token, client_id="panel-steps", reconnect_timeout=0)
    welcome = client.connect()
    try:
        inpaint = next(t for t in welcome.tasks if t["name"] == "inpaint")
        # Krita: the docker's boxes at their defaults; the form shows the daemon's value and sends no steps.
        settings = krita.Settings()
        assert krita.docker_fields(inpaint)["steps"].default_text() == f"default ({PANEL_STEPS})"
        params = krita.forms.params_from(inpaint, settings.param_values(seed=1))
        assert "steps" not in params
        ended = run(client, "inpaint", params)
        assert ended.results[0].width == W
        # GIMP: a procedure run with its arguments' defaults.
        action = gimp.ACTIONS_BY_PROCEDURE["python-fu-ace-bridge-inpaint"]
        defaults = {a.name: a.default for a in gimp.procedure_arguments(action)}
        settings = gimp.Settings(
            **{k: v for k, v in defaults.items() if k in ("seed", "steps", "count", "guidance", "feather", "padding")}
        )
        plan = gimp.plan_job(action, settings, Extent(W, H), Bounds(0, 0, W, H))
        params = gimp.build_params(action, settings, plan)
        assert "steps" not in params
        run(client, "inpaint", {**params, "seed": 2})
    finally:
        client.close()
