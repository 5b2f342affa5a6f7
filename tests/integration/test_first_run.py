"""First run (issue 15 item 3), daemon side: a daemon without model answers `model_status` with what is missing,
its size and licence; `model_pull` (confirmed, daemon's own token) runs `ace-bridge models pull` as a child, its
progress readable by polling; cancel stops it and the next pull resumes; afterwards the engine offers its tasks.
The download source is a local model folder (`models pull --from`, env ACE_BRIDGE_PULL_FROM): no network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ace_protocol.client import BridgeClient, JobError
from daemon_fixture import tiny_engine_factory

pytestmark = pytest.mark.slow


def _client(daemon) -> BridgeClient:
    client = BridgeClient(daemon.url, daemon.token, client_id="first-run-test")
    client.connect()
    return client


def _wait(client: BridgeClient, until, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        state = client.model_status()
        seen.append(state.pull.get("state"))
        if until(state):
            return state, seen
        time.sleep(0.2)  # polling, as the editors do while a download runs
    raise AssertionError(f"no such model state within {timeout} s; pull states seen {seen[-5:]}")


def test_missing_model_then_download_cancel_resume(
    tmp_path: Path, tiny_model_root: Path, thread_daemon_factory, monkeypatch
):
    from ace_editor import daemon as first_run

    empty = tmp_path / "models"
    monkeypatch.setenv("ACE_BRIDGE_PULL_FROM", str(tiny_model_root))
    monkeypatch.setenv("ACE_BRIDGE_PULL_RATE", str(400_000))  # ~1.5 MB of tiny model: a few seconds
    daemon = thread_daemon_factory(engine_factory=tiny_engine_factory(empty))
    client = _client(daemon)
    try:
        state = client.model_status()
        assert not state.installed and state.can_pull and not state.tasks
        assert state.download_bytes >= 30 * 10**9 and "Non-Commercial" in state.licence
        assert state.pull["state"] == "idle" and state.missing[0]["required"]
        advice = first_run.advice(state.to_wire())
        assert advice.state == "missing" and advice.can_download and "35.0 GB" in advice.detail
        with pytest.raises(JobError, match="confirm"):
            client.pull_model()
        state = client.pull_model(confirm=True)
        assert state.pull["state"] == "running"
        state, _ = _wait(client, lambda s: s.pull.get("done_bytes", 0) > 0)
        shown = first_run.advice(state.to_wire())
        assert shown.state == "downloading" and shown.can_cancel and 0 < (shown.fraction or 0) < 1
        state = client.cancel_pull()
        assert state.pull["state"] == "cancelled", state.pull
        partial = list(empty.rglob("*.partial")) + [p for p in empty.rglob("*") if p.is_file()]
        assert partial, "the files fetched so far stay"
        monkeypatch.setenv("ACE_BRIDGE_PULL_RATE", "0")
        client.pull_model(confirm=True)
        state, seen = _wait(client, lambda s: s.pull.get("state") in ("done", "failed"))
        assert state.pull["state"] == "done", state.pull
        assert state.installed and "local_edit" in state.tasks and state.tiny
        assert first_run.advice(state.to_wire()).state == "ready"
        assert not list(empty.rglob("*.partial"))
    finally:
        client.close()
    # A new connection gets the tasks in its welcome.
    client = _client(daemon)
    try:
        assert any(t["name"] == "local_edit" for t in client.welcome.tasks)
    finally:
        client.close()


def test_only_the_daemons_own_token_downloads(tmp_path: Path, thread_daemon_factory):
    """A named token (someone the owner let in) sees the model state but may not start or stop a download."""
    from bridge_server.server.people import add_person

    daemon = thread_daemon_factory(engine_factory=tiny_engine_factory(tmp_path / "models"))
    guest_token = add_person(daemon.config.config_dir, "guest")
    guest = BridgeClient(daemon.url, guest_token, client_id="guest-editor")
    guest.connect()
    try:
        state = guest.model_status()
        assert not state.installed and not state.can_pull
        with pytest.raises(JobError, match="own token"):
            guest.pull_model(confirm=True)
        with pytest.raises(JobError, match="own token"):
            guest.cancel_pull()
        assert guest.model_status().pull["state"] == "idle"
    finally:
        guest.close()
