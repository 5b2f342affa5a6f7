"""Protocol 2's handshake: both sides prove they hold the token, and the token itself never travels.

    client -> hello{protocol_versions: [2], nonce: Nc, token_id}        (no token, no Authorization header)
    daemon -> challenge{nonce: Ns, proof: HMAC(token, "ace-bridge/2 server" Nc Ns)}
    client:   checks the daemon's proof before it sends anything else
    client -> prove{proof: HMAC(token, "ace-bridge/2 client" Nc Ns)}
    daemon -> welcome{protocol_version: 2, ...}

Each proof is bound to its direction and to both nonces, so neither can be reflected or replayed. A program that
took the daemon's port while it was down learns nothing: it sees a nonce and a token id (a hash prefix that names
which token, own or named, without revealing it). Standard library only (the client runs inside editors).

The panel's one-time code (`panel_code`) is had the same way over two HTTP requests, with its own roles
("panel-server", "panel-client"), so no proof made for one can be used for the other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import urllib.error
import urllib.request

AUTH_VERSION = 2
SCHEME = "ace-bridge/2"


def new_nonce() -> str:
    return secrets.token_hex(16)


def token_id(token: str) -> str:
    """Which token a client holds, without revealing it: 16 hex of SHA-256 over a fixed label and the token."""
    return hashlib.sha256(f"{SCHEME} token-id {token}".encode()).hexdigest()[:16]


def proof(token: str, role: str, client_nonce: str, server_nonce: str) -> str:
    """HMAC-SHA256 proof of `role` ("server" or "client") for this pair of nonces."""
    message = f"{SCHEME} {role} {client_nonce} {server_nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(given: object, token: str, role: str, client_nonce: str, server_nonce: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(
        given.encode(), proof(token, role, client_nonce, server_nonce).encode()
    )


# ------------------------------------------------------------------ the panel's one-time code over HTTP

#: Where a holder of the token asks for a one-time panel code (the daemon's route: server/panel/routes.py).
PANEL_CODE_PATH = "/panel/api/code"
#: A code answer is a few hundred bytes; anything much larger is not the daemon.
_MAX_ANSWER_BYTES = 65536


class PanelCodeError(Exception):
    """No panel code: the daemon cannot be reached, has no panel, or answered something else. `str()` says why."""


class PanelUnauthorized(PanelCodeError):
    """The program at the daemon's address did not prove it holds the token (or refused ours): the token is wrong,
    or another program took the port. Nothing but a nonce and the token id was sent to it."""


def panel_code(base_url: str, token: str, timeout: float = 10.0) -> str:
    """A one-time panel path (`/panel/?code=...`) from the daemon at `base_url` (`http(s)://host:port`), had by the
    two-step proof: `{token_id, nonce}` first; the daemon answers with its nonce and its proof of the token; only
    when that proof checks out does this side send its own proof. The token never travels, not even as a header,
    so a program squatting on the port learns nothing. Raises PanelUnauthorized or PanelCodeError."""
    base = base_url.rstrip("/")
    nonce = new_nonce()
    challenge = _post_json(base, {"token_id": token_id(token), "nonce": nonce}, timeout)
    server_nonce = challenge.get("nonce")
    if not isinstance(server_nonce, str) or not proof_matches(
        challenge.get("proof"), token, "panel-server", nonce, server_nonce
    ):
        raise PanelUnauthorized(
            f"the program answering at {base} did not prove it holds your token: the token is wrong, or another "
            "program took the daemon's port (nothing but a nonce and the token's id was sent to it)"
        )
    answer = {"challenge": challenge.get("challenge"), "proof": proof(token, "panel-client", nonce, server_nonce)}
    path = _post_json(base, answer, timeout).get("path")
    if not isinstance(path, str) or not path.startswith("/panel/?code="):
        raise PanelCodeError(f"the daemon at {base} sent no panel link")
    return path


def _post_json(base: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    request = urllib.request.Request(
        base + PANEL_CODE_PATH,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    # No proxy: the daemon is the user's own, and an editor's HTTP(S)_PROXY setting is meant for the web.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as reply:
            data = json.loads(reply.read(_MAX_ANSWER_BYTES).decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise PanelUnauthorized(f"the daemon at {base} refused the token's proof") from None
        if exc.code == 404:
            raise PanelCodeError(f"the daemon at {base} has no control panel (is it an older version?)") from None
        if exc.code == 429:
            raise PanelCodeError(f"the daemon at {base} saw too many wrong tokens; wait a minute") from None
        raise PanelCodeError(f"the daemon at {base} answered {exc.code} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise PanelCodeError(f"cannot reach the daemon at {base}: {getattr(exc, 'reason', exc)}") from None
    if not isinstance(data, dict):
        raise PanelCodeError(f"the daemon at {base} sent a malformed answer")
    return data
