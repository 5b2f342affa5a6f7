"""The shared secret: a random token in a 0600 file next to runtime.json."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from ace_protocol.discovery import TOKEN_FILE

from bridge_server.store.private import private_dir


def write_private(path: Path, text: str) -> None:
    """Write a file only the user can read, without a window where it is world-readable."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


TOKEN_PREFIX = "ace_"


def new_token() -> str:
    """A fresh secret that is safe to paste after ``--token``.

    ``token_urlsafe`` alone starts with "-" one time in 64, and argparse then reads the
    token as an option; the prefix also lets secret scanners recognise a leaked token.
    """
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def load_or_create_token(config_dir: Path) -> str:
    path = config_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except OSError:
        pass
    token = new_token()
    write_private(path, token + "\n")
    return token


def rotate_token(config_dir: Path) -> str:
    token = new_token()
    write_private(config_dir / TOKEN_FILE, token + "\n")
    return token


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive; `Token` is accepted as
    well), or None. The one parser for the WebSocket handshake and the panel."""
    scheme, _, value = (header or "").strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() in ("bearer", "token") and value else None


def tokens_equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
