"""Revoking a named token (`ace-bridge token revoke NAME`) closes that person's open sessions and cancels their
jobs within a moment, whatever else reads people.json first."""

from __future__ import annotations

import threading
import time

from ace_protocol.client import BridgeClient
from pictures import ellipse_mask, gradient_image, gray_payload, rgba_payload

from bridge_server.jobs.gate import Gate
from bridge_server.jobs.job import JobState
from bridge_server.server.people import add_person, revoke_person


def _alice_with_a_queued_job(daemon, token: str) -> tuple[BridgeClient, str, threading.Event]:
    """Alice connected, one job of hers waiting in the (paused) queue, and an event set when her session closes."""
    alice = BridgeClient(daemon.url, token, client_id="alice-krita", reconnect_timeout=0)
    alice.connect()
    closed = threading.Event()
    alice.on_connection_change = lambda state: closed.set() if state != "connected" else None
    handle = alice.submit(
        "inpaint",
        "a red hat",
        image=rgba_payload(gradient_image(32, 32)),
        mask=gray_payload(ellipse_mask(32, 32)),
        params={"seed": 1, "steps": 2},
    )
    return alice, handle.id, closed


def _job_state(daemon, job_id: str) -> JobState:
    return daemon.call(lambda: daemon.state.queue.jobs[job_id].state)


def _wait_cancelled(daemon, job_id: str) -> JobState:
    deadline = time.monotonic() + 10
    while (state := _job_state(daemon, job_id)) is not JobState.CANCELLED and time.monotonic() < deadline:
        time.sleep(0.05)
    return state


def test_a_revoke_takes_effect_even_when_a_handshake_reads_the_file_first(thread_daemon_factory):
    """Every handshake re-reads people.json. One that lands between the revoke and the daemon's own look used to
    swallow the change: Alice's open session and queued job were left alone until the daemon restarted."""
    daemon = thread_daemon_factory(gate=Gate(paused=True))
    alice, job_id, closed = _alice_with_a_queued_job(daemon, add_person(daemon.config.config_dir, "alice"))
    try:
        assert _job_state(daemon, job_id) is JobState.QUEUED
        assert revoke_person(daemon.config.config_dir, "alice")
        daemon.call(daemon.state.people.refresh)  # what another editor's handshake does at that moment
        assert closed.wait(10), "alice's session must be closed"
        assert _wait_cancelled(daemon, job_id) is JobState.CANCELLED
    finally:
        alice.close()


def test_revoking_and_giving_a_new_token_at_once_still_closes_the_old_session(thread_daemon_factory):
    """The owner revokes Alice's leaked token and gives her a new one straight away: the session that used the old
    token closes and its job is cancelled; the new token works."""
    daemon = thread_daemon_factory(gate=Gate(paused=True))
    old_token = add_person(daemon.config.config_dir, "alice")
    alice, job_id, closed = _alice_with_a_queued_job(daemon, old_token)
    try:
        assert revoke_person(daemon.config.config_dir, "alice")
        new_token = add_person(daemon.config.config_dir, "alice")
        assert closed.wait(10), "the session on the revoked token must be closed"
        assert _wait_cancelled(daemon, job_id) is JobState.CANCELLED
        again = BridgeClient(daemon.url, new_token, client_id="alice-krita-2", reconnect_timeout=0)
        again.connect()
        again.close()
    finally:
        alice.close()
