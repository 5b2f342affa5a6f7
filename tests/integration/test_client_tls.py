"""A daemon elsewhere with a self-signed certificate: the client connects only when the pinned fingerprint
matches, so the token is never sent to an impostor."""

from __future__ import annotations

import re

import pytest
from ace_protocol.client import BridgeClient, ClientError
from daemon_fixture import start_process_daemon


def test_pinned_fingerprint_admits_the_daemon_and_refuses_any_other(tmp_path, tiny_model_root):
    daemon = start_process_daemon(
        tmp_path / "home", "--host", "0.0.0.0", "--tls-self-signed", tiny_root=tiny_model_root
    )
    try:
        printed = re.search(r"fingerprint: ([0-9A-F:]{95})", daemon.log())
        assert printed, daemon.log()
        url = f"wss://127.0.0.1:{daemon.port}/v1/ws"
        client = BridgeClient(
            url,
            daemon.token,
            client_id="remote-1",
            fingerprint=printed.group(1).lower(),
            reconnect_timeout=0,
            connect_timeout=30,  # TLS plus the proof handshake on a shared 2-core CI machine
        )
        welcome = client.connect()
        assert welcome.tasks
        client.close()

        wrong = "AA:" * 31 + "AA"
        with pytest.raises(ClientError, match="refusing to send the token"):
            BridgeClient(
                url, daemon.token, client_id="remote-2", fingerprint=wrong, reconnect_timeout=0, connect_timeout=30
            ).connect()
        with pytest.raises(ClientError, match="could not be verified"):
            BridgeClient(url, daemon.token, client_id="remote-3", reconnect_timeout=0, connect_timeout=30).connect()
    finally:
        daemon.stop()
