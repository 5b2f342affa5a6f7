"""Nothing finished is lost: not when the client goes away, not when the daemon restarts or is killed."""

from __future__ import annotations

import asyncio
import signal
import threading

from ace_protocol.client import BridgeClient
from daemon_fixture import start_process_daemon
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload, types

from bridge_server.jobs.gate import Gate


def submit_inpaint(client, steps=3, seed=5):
    return client.submit(
        "inpaint",
        "a red hat",
        image=rgba_payload(gradient_image()),
        mask=gray_payload(ellipse_mask()),
        params={"seed": seed, "steps": steps},
    )


def test_a_client_that_disconnects_mid_job_gets_the_result_when_it_comes_back(thread_daemon_factory):
    gate = Gate()
    gate.hold_steps()
    daemon = thread_daemon_factory(gate=gate)
    client = connect(daemon, "krita-doc-1")
    handle = submit_inpaint(client)
    events = handle.events(timeout=60)
    assert [next(events).TYPE, next(events).TYPE] == ["started", "progress"]
    session = client.session
    client.close()  # the editor went away mid-job
    finished = threading.Event()
    daemon.call(
        lambda: daemon.state.queue.listeners.append(
            lambda job, message: finished.set() if message.TYPE == "done" else None
        )
    )
    gate.run_freely()
    assert finished.wait(60)  # the job finished with nobody listening
    back = BridgeClient(daemon.url, daemon.token, client_id="krita-doc-1", session=session, reconnect_timeout=5)
    try:
        welcome = back.connect()
        assert welcome.resumed and welcome.pending == [handle.id]
        handles = back.fetch_unacknowledged(wait=30)
        assert [h.id for h in handles] == [handle.id]
        got = collect(handles[0])
        assert types(got)[-2:] == ["result", "done"]
        back.ack(handle.id)
    finally:
        back.close()
    again = BridgeClient(daemon.url, daemon.token, client_id="krita-doc-1", reconnect_timeout=5)
    try:
        assert again.connect().pending == []  # acknowledged results are not redelivered
    finally:
        again.close()


def test_the_client_reconnects_by_itself_and_the_job_handle_keeps_going(thread_daemon_factory):
    gate = Gate()
    gate.hold_steps()
    daemon = thread_daemon_factory(gate=gate)
    client = connect(daemon, "gimp-profile-1")
    try:
        handle = submit_inpaint(client)
        events = handle.events(timeout=60)
        assert next(events).TYPE == "started"
        # Drop the TCP connection under the client, as a network hiccup would.
        reconnected = threading.Event()
        client.on_connection_change = lambda state: reconnected.set() if state == "connected" else None
        daemon.call(lambda: asyncio.gather(*[ws.close() for ws in list(daemon.state.sockets)]))
        assert reconnected.wait(30)
        gate.run_freely()
        rest = types(list(events))
        assert "started" in rest  # the new connection is told where the job stands
        assert rest[-2:] == ["result", "done"]
        assert client.session is not None
    finally:
        client.close()


def test_a_restarted_daemon_still_delivers_a_finished_result(tmp_path, tiny_model_root):
    home = tmp_path / "home"
    first = start_process_daemon(home, tiny_root=tiny_model_root)
    client = BridgeClient(first.url, first.token, client_id="cli-1", reconnect_timeout=0)
    client.connect()
    handle = submit_inpaint(client, steps=1)
    result = [e for e in collect(handle) if e.TYPE == "result"][0]
    client.close()  # received but never acknowledged
    assert first.stop() == 0
    second = start_process_daemon(home, tiny_root=tiny_model_root)
    try:
        back = BridgeClient(second.url, second.token, client_id="cli-1", reconnect_timeout=0)
        welcome = back.connect()
        assert welcome.pending == [handle.id]
        (again,) = back.fetch_unacknowledged(wait=10)
        events = collect(again)
        assert types(events) == ["result", "done"]
        assert events[0].image.data == result.image.data
        back.close()
    finally:
        second.stop()


def test_a_job_running_when_the_daemon_is_killed_is_reported_interrupted(tmp_path, tiny_model_root):
    home = tmp_path / "home"
    first = start_process_daemon(home, "--paused", tiny_root=tiny_model_root)
    client = BridgeClient(first.url, first.token, client_id="krita-2", reconnect_timeout=0)
    client.connect()
    handle = submit_inpaint(client)  # journalled before `accepted`; the paused queue keeps it from finishing
    first.stop(signal.SIGKILL)
    client.close()
    second = start_process_daemon(home, tiny_root=tiny_model_root)
    try:
        back = BridgeClient(second.url, second.token, client_id="krita-2", reconnect_timeout=0)
        welcome = back.connect()
        assert welcome.pending == [handle.id]
        (lost,) = back.fetch_unacknowledged(wait=10)
        (event,) = collect(lost)
        assert event.TYPE == "failed" and event.code == "interrupted"
        assert "submit it again" in event.message
        back.close()
    finally:
        second.stop()
