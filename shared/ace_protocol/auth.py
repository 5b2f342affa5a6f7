"""Protocol 2's handshake: both sides prove they hold the token, and the token itself never travels.

    client -> hello{protocol_versions: [2], nonce: Nc, token_id}        (no token, no Authorization header)
    daemon -> challenge{nonce: Ns, proof: HMAC(token, "ace-bridge/2 server" Nc Ns)}
    client:   checks the daemon's proof before it sends anything else
    client -> prove{proof: HMAC(token, "ace-bridge/2 client" Nc Ns)}
    daemon -> welcome{protocol_version: 2, ...}

Each proof is bound to its direction and to both nonces, so neither can be reflected or replayed. A program that
took the daemon's port while it was down learns nothing: it sees a nonce and a token id (a hash prefix that names
which token, own or named, without revealing it). Standard library only (the client runs inside editors).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

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


def proof_matches(given: str | None, token: str, role: str, client_nonce: str, server_nonce: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(
        given.encode(), proof(token, role, client_nonce, server_nonce).encode()
    )
