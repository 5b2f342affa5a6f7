"""One parser reads the token of an Authorization header, for the WebSocket handshake and the panel alike."""

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


def test_the_handshake_and_the_panel_use_it():
    import inspect

    from bridge_server.server import sessions
    from bridge_server.server.panel import routes

    for module in (sessions, routes):
        source = inspect.getsource(module)
        assert "bearer_token(" in source and 'startswith("bearer' not in source.lower(), module.__name__
