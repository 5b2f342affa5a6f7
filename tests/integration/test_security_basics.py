"""The defaults keep web pages out: foreign Origins and Host names are refused before the upgrade;
an oversized frame closes only the connection that sent it."""

from __future__ import annotations

import pytest
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload, types
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_browser_page_from_another_site_cannot_open_the_socket(thread_daemon_factory, headers):
    daemon = thread_daemon_factory()
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(daemon.url, additional_headers=headers, open_timeout=5)
    assert refused.value.response.status_code == 403


def test_a_rebound_host_name_is_refused(thread_daemon_factory):
    import http.client

    daemon = thread_daemon_factory()
    for host in ("attacker.example", "attacker.example:8717", "localhost.", ":8717"):
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
        conn.putrequest("GET", "/v1/health", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        assert conn.getresponse().status == 403, host
        conn.close()
    ok = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    ok.request("GET", "/v1/health")
    assert ok.getresponse().status == 200


def test_an_oversized_frame_closes_that_connection_with_1009_and_others_keep_working(thread_daemon_factory):
    daemon = thread_daemon_factory(max_frame_bytes=1 << 20)
    bystander = connect(daemon, "bystander")
    try:
        with ws_connect(daemon.url, max_size=None) as ws:
            ws.send(b"\x00" * ((1 << 20) + 1))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert closed.value.rcvd.reason == "too_large"
        handle = bystander.submit(
            "inpaint",
            "x",
            image=rgba_payload(gradient_image(32, 32)),
            mask=gray_payload(ellipse_mask(32, 32)),
            params={"steps": 1},
        )
        assert types(collect(handle))[-1] == "done"
    finally:
        bystander.close()


def test_the_token_file_is_private(thread_daemon_factory):
    daemon = thread_daemon_factory()
    mode = (daemon.config.config_dir / "token").stat().st_mode & 0o777
    assert mode == 0o600
