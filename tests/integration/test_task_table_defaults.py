"""One task table: a default changed there (here: steps, monkeypatched) reaches every surface that shows or
applies it: the command line's help, the daemon (validation, welcome, its own setting), the control panel, the
Krita docker's form and the GIMP procedure's arguments."""

from __future__ import annotations

import http.cookiejar
import json
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ace_protocol.client import BridgeClient
from ace_protocol.tasks import TASKS

from bridge_server.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO / "plugins_krita", REPO / "plugins_gimp" / "ace-bridge"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import acegimp_logic as gimp  # noqa: E402
from ace_bridge import model as krita  # noqa: E402

NEW_STEPS = 33


@pytest.fixture
def steps_default() -> Iterator[int]:
    """Every task's `steps` spec says 33 instead of 28 for the length of the test (the specs are frozen
    dataclasses shared by the tasks, so this is the one place a default lives)."""
    specs = {id(p): p for t in TASKS.values() for p in t.params if p.name == "steps"}
    old = {key: spec.default for key, spec in specs.items()}
    for spec in specs.values():
        object.__setattr__(spec, "default", NEW_STEPS)
    try:
        yield NEW_STEPS
    finally:
        for key, spec in specs.items():
            object.__setattr__(spec, "default", old[key])


def help_text(*argv: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse's subparsers action
    return " ".join(sub.choices[argv[0]].format_help().split())


def panel_state(daemon) -> dict:
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
    return json.load(opener.open(base + "/panel/api/state", timeout=10))


def test_a_default_changed_in_the_table_reaches_every_surface(steps_default, thread_daemon_factory):
    # The command line: `ace-bridge edit --help` documents the flag from the table.
    assert re.search(rf"--steps STEPS denoising steps; 1-100; default {steps_default}\b", help_text("edit"))
    # The daemon: validation fills it, `welcome` announces it, and it is the panel's starting "Default steps".
    assert TASKS["inpaint"].validate_params({})["steps"] == steps_default
    daemon = thread_daemon_factory()
    assert daemon.state.settings["default_steps"] == steps_default
    client = BridgeClient(daemon.url, daemon.token, client_id="table-defaults", reconnect_timeout=0)
    try:
        welcome = client.connect()
    finally:
        client.close()
    announced = {p["default"] for t in welcome.tasks for p in t["params"] if p["name"] == "steps"}
    assert announced == {steps_default}
    # The control panel shows it.
    assert panel_state(daemon)["engine"]["settings"]["default_steps"] == steps_default
    # Krita: the docker's steps box says "default (33)" (from the table, and from a welcome).
    inpaint = next(t for t in welcome.tasks if t["name"] == "inpaint")
    assert krita.docker_fields()["steps"].default_text() == f"default ({steps_default})"
    assert krita.docker_fields(inpaint)["steps"].default == steps_default
    # GIMP: each procedure's steps argument documents it.
    for action in gimp.ACTIONS:
        steps = next(a for a in gimp.procedure_arguments(action) if a.name == "steps")
        assert f"default {steps_default}" in steps.help, (action.procedure, steps.help)
