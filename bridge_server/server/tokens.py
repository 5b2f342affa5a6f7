"""The shared secret: a random token in a 0600 file next to runtime.json."""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from ace_protocol.auth import new_nonce, proof, proof_matches
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


class HttpChallenges:
    """Protocol 2 over two HTTP requests (the panel's one-time code, `ace-bridge panel`): the daemon proves it
    holds the token before the client proves it, so the token never travels and a program that took the port
    learns nothing. Roles are `panel-server` / `panel-client`, so a proof from the WebSocket handshake does not
    pass here. Pending challenges are few (at most `max_pending`, the oldest dropped) and short-lived."""

    def __init__(self, ttl_s: float = 30.0, max_pending: int = 256) -> None:
        self.ttl_s, self.max_pending = ttl_s, max_pending
        self._pending: dict[str, tuple[str | None, str, str, float]] = {}  # id -> (token, Nc, Ns, expiry)

    def issue(self, token: str | None, client_nonce: str) -> dict[str, str]:
        """The challenge for a client that named `token` (None: a token id we do not hold; the proof is then made
        with a random key and looks the same)."""
        now = time.monotonic()
        self._pending = {k: v for k, v in self._pending.items() if v[3] > now}
        while len(self._pending) >= self.max_pending:
            self._pending.pop(next(iter(self._pending)))
        challenge, server_nonce = secrets.token_urlsafe(18), new_nonce()
        self._pending[challenge] = (token, client_nonce, server_nonce, now + self.ttl_s)
        key = token if token is not None else secrets.token_urlsafe(32)
        return {
            "challenge": challenge,
            "nonce": server_nonce,
            "proof": proof(key, "panel-server", client_nonce, server_nonce),
        }

    def redeem(self, challenge: str, given: str) -> bool:
        """Whether `given` is the client's proof for this challenge (single use, whatever the outcome)."""
        token, client_nonce, server_nonce, expiry = self._pending.pop(challenge, (None, "", "", 0.0))
        if token is None or expiry < time.monotonic():
            return False
        return proof_matches(given, token, "panel-client", client_nonce, server_nonce)
