"""Checks that run before any handler: Host (DNS rebinding), Origin and Fetch-Metadata (cross-site pages).

A browser page on any site can open a WebSocket to 127.0.0.1; only the Host/Origin headers tell it apart from
an editor. Editors send no Origin; the panel's own page sends its own origin. Everything else is refused with 403
before the upgrade, so no message is ever read from it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def split_host(host_header: str) -> tuple[str, str | None]:
    """'127.0.0.1:8717' -> ('127.0.0.1', '8717'); '[::1]:80' -> ('::1', '80')."""
    host = host_header.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return "", None
        name, rest = host[1:end], host[end + 1 :]
        return name, rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None


def is_trusted_host(name: str, allowed: tuple[str, ...] = ()) -> bool:
    """IP literals and reserved loopback names cannot be rebound by public DNS; anything else must be configured."""
    if not name:
        return False
    if name in allowed:
        return True
    if name.endswith("."):  # 'localhost.' resolves through DNS search rules; refuse rather than reason about it
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    header = request.headers.get("Host")
    if header is None:
        return False
    name, port = split_host(header)
    if port is not None and not port.isdigit():
        return False
    return is_trusted_host(name.lower(), allowed)


def origin_allowed(request: web.Request) -> bool:
    """No Origin (editors, CLI) is fine; a browser Origin must be this daemon's own page."""
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    host = request.headers.get("Host", "")
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower() and bool(host)


def security_middleware(allowed_hosts: tuple[str, ...]) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request, allowed_hosts):
            return web.Response(status=403, text="forbidden: Host header not allowed (DNS rebinding guard)\n")
        if not origin_allowed(request):
            return web.Response(status=403, text="forbidden: cross-origin request\n")
        if "token" in request.query:
            # Tokens in URLs end up in logs and browser history; refuse so no client learns to do it.
            return web.Response(status=400, text="bad request: send the token in hello or the Authorization header\n")
        if request.method == "POST" and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ):
            return web.Response(status=415, text="unsupported media type: JSON bodies only\n")
        return await handler(request)

    return check


class FailureThrottle:
    """Slows down repeated wrong tokens per peer: each failure doubles the wait, capped, forgotten after a minute.

    Waits are handed out as consecutive time slots per peer, so guessing on many connections at once queues up
    instead of paying one wait for all of them.
    """

    def __init__(self, base_s: float = 0.05, cap_s: float = 2.0, window_s: float = 60.0) -> None:
        self.base_s, self.cap_s, self.window_s = base_s, cap_s, window_s
        self._failures: dict[str, tuple[int, float]] = {}
        self._next_slot: dict[str, float] = {}

    def delay_for(self, peer: str) -> float:
        """The wait before this attempt may be checked (reserves the peer's next slot)."""
        count, last = self._failures.get(peer, (0, 0.0))
        now = time.monotonic()
        if not count or now - last > self.window_s:
            return 0.0
        step = min(self.cap_s, self.base_s * (2 ** max(0, count - 1)))
        # Bounded backlog: a flood of parallel guesses holds no socket longer than 10 capped waits.
        slot = min(max(now, self._next_slot.get(peer, 0.0)) + step, now + 10 * self.cap_s)
        self._next_slot[peer] = slot
        return slot - now

    def failed(self, peer: str) -> None:
        count, last = self._failures.get(peer, (0, 0.0))
        if time.monotonic() - last > self.window_s:
            count = 0
        self._failures[peer] = (count + 1, time.monotonic())
        if len(self._failures) > 10_000:  # bounded memory under a flood of peers
            self._failures.clear()
            self._next_slot.clear()

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)
        self._next_slot.pop(peer, None)
