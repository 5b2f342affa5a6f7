"""A client says hello and is welcomed, or is told exactly why not."""

from __future__ import annotations

import pytest
from ace_protocol.auth import AUTH_VERSION
from ace_protocol.client import BridgeClient, DaemonNotRunning, Unauthorized, VersionMismatch
from ace_protocol.codec import decode_server_message, encode
from ace_protocol.messages import Error, Hello, StatusRequest
from daemon_fixture import free_port
from integration_helpers import connect


def test_welcome_carries_limits_engine_state_and_the_task_table(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        welcome = client.welcome
        assert welcome.protocol_version == AUTH_VERSION  # the shared client speaks protocol 2 (mutual proof)
        assert welcome.limits["max_frame_bytes"] == daemon.config.max_frame_bytes
        assert welcome.engine["state"] in ("loaded", "unloaded", "loading")
        names = [t["name"] for t in welcome.tasks]
        assert names == [
            "instruct",
            "local_edit",
            "reference_edit",
            "subject",
            "portrait",
            "generate",
            "inpaint",
            "fft_repaint",
            "fft_super_resolution",
            "fft_colorize",
            "fft_control",
            "fft_reference",
            "fft_reference_edit",
        ]
        control = next(t for t in welcome.tasks if t["name"] == "local_edit")
        assert control["reference_kind"] == "control" and control["max_references"] == 1
        inpaint = next(t for t in welcome.tasks if t["name"] == "inpaint")
        steps = next(p for p in inpaint["params"] if p["name"] == "steps")
        assert steps == {
            "name": "steps",
            "kind": "int",
            "default": 28,
            "minimum": 1,
            "maximum": 100,
            "description": "denoising steps",
        }
    finally:
        client.close()


def test_wrong_token_is_unauthorized(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = BridgeClient(daemon.url, "not-the-token", client_id="x", reconnect_timeout=0)
    with pytest.raises(Unauthorized):
        client.connect()


def test_missing_token_is_unauthorized(thread_daemon_factory, monkeypatch):
    daemon = thread_daemon_factory()
    monkeypatch.setenv("ACE_BRIDGE_CONFIG_DIR", "/nonexistent-config")
    client = BridgeClient(daemon.url, None, client_id="x", reconnect_timeout=0)
    with pytest.raises(Unauthorized):
        client.connect()


def test_wrong_protocol_version_is_refused_with_a_clear_message(thread_daemon_factory):
    from websockets.sync.client import connect as ws_connect

    daemon = thread_daemon_factory()
    with ws_connect(daemon.url) as ws:
        ws.send(
            encode(
                Hello(
                    client_id="old",
                    client_name="old-plugin",
                    client_version="0",
                    protocol_versions=[0],
                    token=daemon.token,
                )
            )
        )
        reply = decode_server_message(ws.recv(timeout=10))
    assert isinstance(reply, Error) and reply.code == "unsupported_version"
    assert "update the plugin" in reply.message and "protocol 2" in reply.message


def test_version_mismatch_raises_in_the_client(thread_daemon_factory, monkeypatch):
    import ace_protocol.client as client_module

    daemon = thread_daemon_factory()
    monkeypatch.setattr(client_module, "AUTH_VERSION", 99)
    with pytest.raises(VersionMismatch):
        BridgeClient(daemon.url, daemon.token, client_id="future", reconnect_timeout=0).connect()


def test_a_message_before_hello_is_refused(thread_daemon_factory):
    from websockets.sync.client import connect as ws_connect

    daemon = thread_daemon_factory()
    with ws_connect(daemon.url) as ws:
        ws.send(encode(StatusRequest(id="1")))
        reply = decode_server_message(ws.recv(timeout=10))
    assert isinstance(reply, Error) and reply.code == "bad_request" and "hello" in reply.message


def test_daemon_not_running_names_the_command_to_start_it():
    client = BridgeClient(f"ws://127.0.0.1:{free_port()}/v1/ws", "t", client_id="x", reconnect_timeout=0)
    with pytest.raises(DaemonNotRunning, match="ace-bridge serve"):
        client.connect()
