"""Issue 7, remote mode: opt-in, refuses to start without TLS unless --insecure, self-signed certificates with a
printed SHA-256 fingerprint, and a Host check that then allows the configured names (and IP literals) only."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest
from adversarial_helpers import raw_upgrade, ws_handshake
from daemon_fixture import REPO, isolated_env, start_process_daemon


def test_remote_mode_without_tls_refuses_to_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "serve", "--demo", "--host", "0.0.0.0", "--port", "0"],
        env=isolated_env(tmp_path),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without TLS" in result.stderr
    assert "--insecure" in result.stderr and "--tls-self-signed" in result.stderr


def test_insecure_remote_mode_allows_configured_host_names_only(tmp_path, tiny_model_root):
    daemon = start_process_daemon(
        tmp_path / "home", "--host", "0.0.0.0", "--insecure", "--allow-host", "studio.lan", tiny_root=tiny_model_root
    )
    try:
        assert raw_upgrade(daemon.port, f"studio.lan:{daemon.port}")[0] == 101
        assert raw_upgrade(daemon.port, f"127.0.0.1:{daemon.port}")[0] == 101
        assert raw_upgrade(daemon.port, f"evil.example:{daemon.port}")[0] == 403
        assert raw_upgrade(daemon.port, f"studio.lan.:{daemon.port}")[0] == 403
        assert raw_upgrade(daemon.port, f"studio.lan.evil.example:{daemon.port}")[0] == 403
    finally:
        daemon.stop()


def _served_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def test_self_signed_remote_mode_prints_the_fingerprint_it_serves(tmp_path, tiny_model_root):
    from websockets.sync.client import connect as ws_connect

    home = tmp_path / "home"
    daemon = start_process_daemon(
        home, "--host", "0.0.0.0", "--tls-self-signed", "--allow-host", "studio.lan", tiny_root=tiny_model_root
    )
    try:
        assert daemon.url.startswith("wss://")
        printed = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", daemon.log())
        assert printed, daemon.log()
        assert _served_fingerprint(daemon.port) == printed.group(1)
        key = daemon.config_dir / "tls" / "key.pem"
        assert key.stat().st_mode & 0o077 == 0
        # A client that trusts exactly this certificate gets through TLS and the usual handshake.
        context = ssl.create_default_context(cafile=str(daemon.config_dir / "tls" / "cert.pem"))
        with ws_connect(daemon.url, ssl=context, open_timeout=15) as ws:
            assert ws_handshake(ws, daemon.token, "remote-editor").TYPE == "welcome"
        # Over TLS a bearer token is still taken (the panel's code endpoint, for older `ace-bridge panel`).
        bearer = urllib.request.Request(
            f"https://127.0.0.1:{daemon.port}/panel/api/code",
            b"{}",
            {"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(bearer, timeout=15, context=context) as reply:
            assert reply.status == 200
        # Plain ws:// to the TLS port gets nowhere.
        with pytest.raises(Exception):  # noqa: B017 - any failure to talk plaintext is right
            with ws_connect(daemon.url.replace("wss://", "ws://"), open_timeout=5) as ws:
                ws.recv(timeout=5)
    finally:
        daemon.stop()
    # A restart reuses the certificate, so clients that pinned the fingerprint keep working.
    again = start_process_daemon(home, "--host", "0.0.0.0", "--tls-self-signed", tiny_root=tiny_model_root)
    try:
        assert _served_fingerprint(again.port) == printed.group(1)
    finally:
        again.stop()


def test_insecure_remote_mode_refuses_a_bearer_token_over_plain_http(tmp_path, tiny_model_root):
    """`serve --host 0.0.0.0 --insecure`: a token in an Authorization header over plain HTTP (the panel's code
    endpoint, a WebSocket upgrade) is refused with 403 `tls_required` and a message saying what to do, and gets
    nothing; clients that prove the token instead (plugins, CLI, `ace-bridge panel`) still get in."""
    import json
    import urllib.error
    import urllib.request

    from ace_protocol.client import BridgeClient

    from bridge_server.server.panel.window import request_code

    daemon = start_process_daemon(tmp_path / "home", "--host", "0.0.0.0", "--insecure", tiny_root=tiny_model_root)
    try:
        base = f"http://127.0.0.1:{daemon.port}"
        bearer = {"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"}
        request = urllib.request.Request(base + "/panel/api/code", b"{}", bearer, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=15)
        answer = json.loads(refused.value.read())
        assert refused.value.code == 403 and answer["error"] == "tls_required", answer
        assert "TLS" in answer["message"] and "--tls-self-signed" in answer["message"]
        status, head = raw_upgrade(
            daemon.port, f"127.0.0.1:{daemon.port}", headers={"Authorization": bearer["Authorization"]}
        )
        assert status == 403 and b"tls_required" in head
        # Proving instead of sending works over the same plain connection.
        assert request_code(base, daemon.token).startswith(base + "/panel/?code=")
        client = BridgeClient(daemon.url, daemon.token, client_id="remote-prover", reconnect_timeout=0)
        assert client.connect().protocol_version == 2
        client.close()
    finally:
        daemon.stop()
