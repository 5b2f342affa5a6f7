"""Issue 7, attacks from a browser and from a guesser: cross-site WebSocket hijacking, DNS rebinding, tokens.

Every hostile upgrade must be refused with an HTTP error *before* the WebSocket exists, so no message from it is
ever read: the daemon then holds no socket and no session for it.
"""

from __future__ import annotations

import time

import pytest
from ace_protocol.client import BridgeClient, Unauthorized
from adversarial_helpers import raw_upgrade, raw_ws, ws_handshake

from bridge_server.server.security import FailureThrottle
from bridge_server.server.tokens import rotate_token


@pytest.fixture
def daemon(thread_daemon_factory):
    return thread_daemon_factory()


def _nothing_was_read(daemon) -> None:
    assert daemon.call(lambda: len(daemon.state.hub.sessions)) == 0
    assert daemon.call(lambda: len(list(daemon.state.sockets))) == 0


def test_a_plain_upgrade_from_an_editor_is_accepted(daemon):
    status, _ = raw_upgrade(daemon.port, f"127.0.0.1:{daemon.port}")
    assert status == 101  # the control case: the refusals below are not a broken helper


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://evil.example:8717"},
        {"Origin": "null"},  # sandboxed iframes, file:// pages (the ComfyUI GHSA-5xxr-jvhm-jxmj bypass)
        {"Sec-Fetch-Site": "cross-site"},  # a browser that sends no Origin on the upgrade still says this
        {"Sec-Fetch-Site": "same-site"},  # another port of localhost is another app
        {"Origin": "http://localhost:1", "Sec-Fetch-Site": "same-site"},
        {"Origin": "chrome-extension://abcdefghijklmnop"},
    ],
    ids=["foreign-https", "foreign-http", "null", "fetch-cross-site", "fetch-same-site", "other-port", "extension"],
)
def test_cross_site_websocket_hijacking_is_refused_before_upgrade(daemon, headers):
    status, head = raw_upgrade(daemon.port, f"127.0.0.1:{daemon.port}", headers)
    assert status == 403, head
    _nothing_was_read(daemon)


def test_the_daemons_own_page_origin_is_accepted(daemon):
    host = f"127.0.0.1:{daemon.port}"
    status, _ = raw_upgrade(daemon.port, host, {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
    assert status == 101


@pytest.mark.parametrize(
    "host",
    [
        "rebind.attacker.example:{port}",  # resolves to 127.0.0.1 through the attacker's DNS
        "rebind.attacker.example",
        "",  # empty host (the Ollama `Host: :11434` bypass)
        ":{port}",
        "localhost.:{port}",  # trailing dot: a fully qualified name, looked up through DNS
        "127.0.0.1.:{port}",
        "localhost:{port}@evil.example",
        "127.0.0.1:{port}:{port}",
        "0x7f000001:{port}",
        "[::1:{port}",
        None,  # no Host header at all
    ],
    ids=[
        "attacker",
        "attacker-no-port",
        "empty",
        "empty-name",
        "trailing-dot",
        "ip-trailing-dot",
        "userinfo",
        "two-ports",
        "hex-ip",
        "broken-ipv6",
        "absent",
    ],
)
def test_dns_rebinding_hosts_are_refused_before_upgrade(daemon, host):
    header = None if host is None else host.format(port=daemon.port)
    status, head = raw_upgrade(daemon.port, header)
    assert status in (400, 403), head
    _nothing_was_read(daemon)


def test_rebinding_with_a_matching_origin_is_still_refused(daemon):
    """Host == Origin == attacker domain is what a rebinding page sends; equality proves nothing."""
    host = f"rebind.attacker.example:{daemon.port}"
    status, _ = raw_upgrade(daemon.port, host, {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
    assert status == 403
    _nothing_was_read(daemon)


@pytest.mark.parametrize("host", ["localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}", "127.0.0.1"])
def test_loopback_names_and_ip_literals_are_accepted(daemon, host):
    status, _ = raw_upgrade(daemon.port, host.format(port=daemon.port))
    assert status == 101


def test_health_endpoint_has_the_same_guards(daemon):
    status, _ = raw_upgrade(daemon.port, "rebind.attacker.example", path="/v1/health", upgrade=False)
    assert status == 403
    status, _ = raw_upgrade(
        daemon.port, f"127.0.0.1:{daemon.port}", {"Origin": "null"}, path="/v1/health", upgrade=False
    )
    assert status == 403


# ------------------------------------------------------------------ tokens


def test_token_in_the_url_query_is_refused_even_when_right(daemon):
    """A token in a URL ends up in logs, proxies and history; refusing it means no client learns to send it."""
    status, head = raw_upgrade(daemon.port, f"127.0.0.1:{daemon.port}", path=f"/v1/ws?token={daemon.token}")
    assert status == 400, head
    assert daemon.token.encode() not in head
    _nothing_was_read(daemon)


def test_missing_token_gets_unauthorized_and_the_socket_closes(daemon):
    with raw_ws(daemon) as ws:
        reply = ws_handshake(ws, None, check_server=False)  # no token id, no proof it could make
        assert reply.TYPE == "error" and reply.code == "unauthorized"
        assert "ace-bridge token" in reply.message
    assert daemon.call(lambda: len(daemon.state.hub.sessions)) == 0


def test_the_token_in_the_authorization_header_counts_for_nothing(daemon):
    """Protocol 2 never reads the header: the right token sent there does not stand in for the proof."""
    from websockets.sync.client import connect as ws_connect

    with ws_connect(daemon.url, additional_headers={"Authorization": f"Bearer {daemon.token}"}) as ws:
        assert ws_handshake(ws, None, check_server=False).code == "unauthorized"
    assert daemon.call(lambda: len(daemon.state.hub.sessions)) == 0


def test_a_rotated_token_is_refused_and_the_new_one_works(daemon):
    old = daemon.token
    new = rotate_token(daemon.config.config_dir)
    with pytest.raises(Unauthorized):
        BridgeClient(daemon.url, old, client_id="old-token", reconnect_timeout=0).connect()
    client = BridgeClient(daemon.url, new, client_id="new-token", reconnect_timeout=0)
    client.connect()
    client.close()


def test_the_token_comparison_does_not_accept_prefixes_or_case_changes(daemon):
    for guess in (daemon.token[:-1], daemon.token + "x", daemon.token.upper(), "", " " + daemon.token):
        with raw_ws(daemon) as ws:
            assert ws_handshake(ws, guess, check_server=False).code == "unauthorized"


def _wrong_attempt(daemon) -> float:
    started = time.monotonic()
    with raw_ws(daemon) as ws:
        assert ws_handshake(ws, "wrong-token-guess", check_server=False).code == "unauthorized"
    return time.monotonic() - started


def test_repeated_wrong_tokens_are_slowed_down(daemon):
    # This test's own user (the daemon's) is exempt by default; here it plays another user.
    throttle = FailureThrottle(base_s=0.1, cap_s=0.4, exempt_uids=())
    daemon.call(lambda: setattr(daemon.state, "throttle", throttle))
    for _ in range(4):
        _wrong_attempt(daemon)
    # The fifth guess waits at least the capped delay (a lower bound on time, so never flaky).
    assert _wrong_attempt(daemon) >= 0.4
    # The right token gets in at once (it is checked before any wait), and success forgets the failures.
    started = time.monotonic()
    client = BridgeClient(daemon.url, daemon.token, client_id="after-brute-force", reconnect_timeout=0)
    client.connect()
    client.close()
    assert time.monotonic() - started < 0.4
    assert throttle.admit(next(iter(throttle._next_slot), "uid:0")) and not throttle._failures


def test_parallel_wrong_tokens_are_slowed_down_too(daemon):
    """Guessing on many connections at once must not dodge the throttle: waits queue up per principal."""
    import concurrent.futures

    throttle = FailureThrottle(base_s=0.1, cap_s=0.1, exempt_uids=())
    daemon.call(lambda: setattr(daemon.state, "throttle", throttle))
    _wrong_attempt(daemon)  # one failure on record: from now on every guess costs 0.1 s
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: _wrong_attempt(daemon), range(8)))
    assert time.monotonic() - started >= 8 * 0.1
