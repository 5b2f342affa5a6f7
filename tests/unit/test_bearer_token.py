"""One parser reads the token of an Authorization header (the panel's code endpoint); the WebSocket handshake never
reads that header (protocol 2 proves the token, docs/protocol.md §4)."""

from __future__ import annotations

import pytest

from bridge_server.server.tokens import bearer_token


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer ace_abc", "ace_abc"),
        ("bearer  ace_abc ", "ace_abc"),
        ("BEARER ace_-x", "ace_-x"),
        ("Token ace_abc", "ace_abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_the_panel_uses_it_and_the_handshake_never_reads_the_header():
    import inspect

    from bridge_server.server import sessions
    from bridge_server.server.panel import routes

    source = inspect.getsource(routes)
    assert "bearer_token(" in source and 'startswith("bearer' not in source.lower()
    handshake = inspect.getsource(sessions)
    assert "bearer_token(" not in handshake and "request.headers" not in handshake
