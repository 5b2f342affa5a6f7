"""The editors' ways into the panel ("Open in panel" in Krita, "Recent results" in GIMP) never hand the token to
a program that took the daemon's port. Another user (`nobody`) listens there while the daemon is down and answers
like a daemon would: a made-up challenge, an older daemon's 401 asking for the token, or a code straight away.
It receives one request carrying a nonce and the token's id, never the token, never a proof, never a second
request; the painter gets the editor's own typed error saying the token was refused or another program answers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest
from ace_editor.daemon_history import DaemonHistory, HistoryError
from ace_editor.panel_link import PanelLinkError, panel_link
from daemon_fixture import free_port
from test_trust import hostile_peer_as_nobody

TOKEN = "ace_" + "squ4t" * 9
JOB_ID = "0123456789abcdef" * 2

SQUATTER_ANSWERS = {
    "fake-challenge": (200, {"challenge": "c1", "nonce": "00" * 16, "proof": "ab" * 32}),
    "old-daemon-401": (401, {"error": "unauthorized", "message": "wrong or missing token"}),
    "bare-code": (200, {"code": "x", "path": "/panel/?code=x", "expires_s": 60}),
}


def open_in_panel(port: int) -> object:
    return panel_link(f"ws://127.0.0.1:{port}/v1/ws", TOKEN, JOB_ID, timeout=5)


def recent_results(port: int) -> object:
    return DaemonHistory(f"ws://127.0.0.1:{port}/v1/ws", TOKEN, timeout=5).entries()


EDITOR_CALLS: dict[str, tuple[Callable[[int], object], type[Exception]]] = {
    "krita-open-in-panel": (open_in_panel, PanelLinkError),
    "gimp-recent-results": (recent_results, HistoryError),
}


@pytest.fixture
def squatter(request: pytest.FixtureRequest) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    status, body = SQUATTER_ANSWERS[request.param]
    port = free_port()
    process = hostile_peer_as_nobody(
        {"mode": "http_squat", "port": port, "status": status, "body": body, "seconds": 15}
    )
    try:
        assert process.stdout is not None and json.loads(process.stdout.readline())["listening"]
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("squatter", list(SQUATTER_ANSWERS), indirect=True)
@pytest.mark.parametrize("editor_call", list(EDITOR_CALLS))
def test_an_editor_never_sends_the_token_to_a_port_squatter(squatter, editor_call):
    port, process = squatter
    call, error = EDITOR_CALLS[editor_call]
    with pytest.raises(error) as refused:
        call(port)
    out, err = process.communicate(timeout=60)
    captured = json.loads(out.strip().splitlines()[-1])
    assert captured["uid"] == 65534, err
    assert len(captured["received"]) == 1  # the first step only: no proof, no retry, no history request
    wire = bytes.fromhex(captured["received"][0])
    assert TOKEN.encode() not in wire and b"authorization" not in wire.lower() and b"bearer" not in wire.lower()
    assert b"token_id" in wire and b"nonce" in wire and b"proof" not in wire
    assert "refused the token, or another program took its port" in str(refused.value)
