"""Checks that run before any handler: Host (DNS rebinding), Origin and Fetch-Metadata (cross-site pages).

A browser page on any site can open a WebSocket to 127.0.0.1; only the Host/Origin headers tell it apart from
an editor. Editors send no Origin; the panel's own page sends its own origin. Everything else is refused with 403
before the upgrade, so no message is ever read from it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)


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


TLS_REQUIRED = (
    "this daemon listens beyond this machine without TLS (serve --insecure), so a token sent in an Authorization "
    "header could be read by anyone on the network: it is refused unread. Use a client that proves the token "
    "instead of sending it (protocol 2: the plugins, the CLI and `ace-bridge panel` of this version), or serve with "
    "TLS (--tls-self-signed or --tls-cert/--tls-key) and connect with wss:// or https://"
)


def security_middleware(
    allowed_hosts: tuple[str, ...], guard: ConnectionGuard | None = None, remote: bool = False
) -> Middleware:
    """`remote`: the daemon listens beyond loopback; a bearer token is then taken only over TLS."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if guard is not None:
            guard.request_started(request, websocket=request.path == "/v1/ws")
        if not host_allowed(request, allowed_hosts):
            return web.Response(status=403, text="forbidden: Host header not allowed (DNS rebinding guard)\n")
        if not origin_allowed(request):
            return web.Response(status=403, text="forbidden: cross-origin request\n")
        if "token" in request.query:
            # Tokens in URLs end up in logs and browser history; refuse so no client learns to do it.
            return web.Response(status=400, text="bad request: tokens never go in URLs\n")
        if remote and not request.secure and "Authorization" in request.headers:
            return web.json_response({"error": "tls_required", "message": TLS_REQUIRED}, status=403)
        if request.method == "POST" and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ):
            return web.Response(status=415, text="unsupported media type: JSON bodies only\n")
        return await handler(request)

    return check


class FailureThrottle:
    """Wrong tokens cost time, per principal, without ever slowing the right token of someone else.

    - The key is who connects, not the address they chose: on Linux a loopback peer is keyed by the user that owns
      its socket (read from /proc/net/tcp), so rotating 127.x.y.z gains nothing; any other loopback peer counts as
      one ("loopback"); a remote peer is keyed by its address (its /64 for IPv6).
    - Programs of the daemon's own user are never throttled: they can read the token file anyway, and this is
      what keeps editors unaffected by a flood from another user.
    - Each wrong token reserves the key's next slot (50 ms, doubling per failure, capped at 2 s, forgotten after a
      minute of no failure) and is answered at that slot. A key whose reserved slots reach `backlog` capped waits
      into the future is refused with `rate_limited` *before* its token is checked, so no number of parallel or
      abandoned connections checks more than about one guess per capped wait (0.5/s).
    - A daemon-wide budget: once `global_budget` failures happened in the last minute, every key that has failed
      in that minute is refused unchecked until the minute has passed; keys with no failure are unaffected.
    """

    def __init__(
        self,
        base_s: float = 0.05,
        cap_s: float = 2.0,
        window_s: float = 60.0,
        backlog: int = 10,
        global_budget: int = 60,
        exempt_uids: tuple[int, ...] | None = None,
    ) -> None:
        self.base_s, self.cap_s, self.window_s = base_s, cap_s, window_s
        self.backlog, self.global_budget = backlog, global_budget
        self.exempt_uids = (os.geteuid(),) if exempt_uids is None and hasattr(os, "geteuid") else (exempt_uids or ())
        self._failures: dict[str, tuple[int, float]] = {}
        self._next_slot: dict[str, float] = {}
        self._recent: deque[float] = deque()  # times of failures within the window, all keys
        self.checked_failures = 0  # wrong tokens actually compared (tests and the log read it)
        self.refused = 0  # attempts refused unchecked

    def key_for(self, peer: str, peername: Any = None, sockname: Any = None) -> str:
        """The principal behind a connection: 'uid:N' (Linux loopback), 'loopback', or a remote address."""
        try:
            address = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return peer or "?"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            uid = loopback_peer_uid(peername, sockname)
            if uid == GONE:
                return "gone"
            return f"uid:{uid}" if uid is not None else "loopback"
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def exempt(self, key: str) -> bool:
        return key.startswith("uid:") and int(key[4:]) in self.exempt_uids

    def _live(self, key: str, now: float) -> int:
        count, last = self._failures.get(key, (0, 0.0))
        if count and now - last > self.window_s:
            self._failures.pop(key, None)
            self._next_slot.pop(key, None)
            return 0
        return count

    def admit(self, key: str) -> bool:
        """Whether this attempt may have its token checked at all (False: answer rate_limited, check nothing)."""
        if self.exempt(key):
            return True
        now = time.monotonic()
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        if not self._live(key, now):
            return True
        if self._next_slot.get(key, 0.0) - now > self.backlog * self.cap_s - 1e-9 or (
            len(self._recent) >= self.global_budget
        ):
            self.refused += 1
            return False
        return True

    def refusing(self, peername: Any, sockname: Any) -> bool:
        """Whether a new connection's principal would be refused now anyway: such a connection is closed as it is
        accepted (ConnectionGuard), so a throttled flood costs the daemon an accept, not a handshake."""
        if not isinstance(peername, tuple) or not self._failures:
            return False
        key = self.key_for(str(peername[0]), peername, sockname)
        if key in ("gone", "loopback") or self.exempt(key) or key not in self._failures:
            return False
        now = time.monotonic()
        return bool(self._live(key, now)) and self._next_slot.get(key, 0.0) - now > self.backlog * self.cap_s

    def failed(self, key: str) -> float:
        """Record a wrong token; returns how long to wait before answering it (its reserved slot)."""
        self.checked_failures += 1
        if self.exempt(key):
            return 0.0
        now = time.monotonic()
        count = self._live(key, now) + 1
        self._failures[key] = (count, now)
        self._recent.append(now)
        if len(self._failures) > 10_000:  # bounded memory under a flood of remote addresses
            self._failures = {key: (count, now)}
            self._next_slot = {k: v for k, v in self._next_slot.items() if k == key}
        step = min(self.cap_s, self.base_s * (2 ** (count - 1)))
        slot = max(now, self._next_slot.get(key, 0.0)) + step
        self._next_slot[key] = slot
        return slot - now

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._next_slot.pop(key, None)


GONE = -1


def loopback_peer_uid(peername: Any, sockname: Any) -> int | None:
    """The user owning the other end of a loopback TCP connection (Linux: /proc/net/tcp[6]), or None; GONE when
    the peer has already closed its socket (the kernel then shows it as root's, with inode 0: never trust that)."""
    if not (isinstance(peername, tuple) and isinstance(sockname, tuple)):
        return None
    try:
        peer_ip, local_ip = ipaddress.ip_address(peername[0].split("%")[0]), ipaddress.ip_address(sockname[0])
        want_local, want_remote = _proc_address(peer_ip, peername[1]), _proc_address(local_ip, sockname[1])
        table = "/proc/net/tcp6" if peer_ip.version == 6 else "/proc/net/tcp"
        with open(table, "rb") as f:
            text = f.read()  # one search in C, not a Python loop: a flood leaves thousands of lines here
        at = text.find(f" {want_local} {want_remote} ".encode())
        if at >= 0:
            fields = text[at : text.find(b"\n", at) % (len(text) + 1)].split()
            if len(fields) > 8:
                return GONE if fields[8] == b"0" else int(fields[6])
    except (OSError, ValueError, IndexError, TypeError):
        return None
    return None


def _proc_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """How /proc/net/tcp prints an address: 32-bit words in host byte order, then the port, in hex."""
    packed = ip.packed
    words = "".join(f"{struct.unpack('=I', packed[i : i + 4])[0]:08X}" for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"


class ConnectionGuard:
    """Bounds what a connection can hold before it has proved the token.

    Every accepted connection is *pending* until its WebSocket `hello` succeeds (or, for plain HTTP, until a
    complete request reached a handler). A pending connection is closed when its deadline (`deadline_s` from
    accept: headers, upgrade and hello together) passes, and when more than `max_pending` are pending the oldest
    is closed, so a new connection, an editor's included, always finds room. Attached to aiohttp's server in
    `BridgeRunner` (server/app.py).
    """

    def __init__(self, max_pending: int = 256, deadline_s: float = 20.0) -> None:
        self.max_pending, self.deadline_s = max_pending, deadline_s
        #: Set by the app once its throttle exists: (peername, sockname) -> close this connection at once?
        self.early_refusal: Callable[[Any, Any], bool] | None = None
        self.refused_early = 0
        self._pending: OrderedDict[Any, asyncio.TimerHandle] = OrderedDict()
        self.dropped_deadline = 0
        self.dropped_overflow = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def attach(self, server: Any) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self.settled(handler)
            lost(handler, exc)

        server.connection_made, server.connection_lost = connection_made, connection_lost

    def opened(self, handler: Any, transport: Any) -> None:
        if self.early_refusal is not None and self.early_refusal(
            transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        ):
            self.refused_early += 1
            # After aiohttp has finished setting the connection up (aborting inside connection_made leaves its
            # request task without a server and logs a traceback per connection).
            asyncio.get_running_loop().call_soon(transport.abort)
            return
        loop = asyncio.get_running_loop()
        self._pending[handler] = loop.call_later(self.deadline_s, self._expire, handler, transport)
        while len(self._pending) > self.max_pending:
            oldest, timer = self._pending.popitem(last=False)
            timer.cancel()
            self.dropped_overflow += 1
            _abort(oldest)
            limited_log(
                log, logging.WARNING, "too many connections without a token (%d); closed the oldest", self.max_pending
            )

    def _expire(self, handler: Any, transport: Any) -> None:
        if self._pending.pop(handler, None) is not None:
            self.dropped_deadline += 1
            limited_log(
                log,
                logging.INFO,
                "closed a connection that did not finish its request and hello within %g s",
                self.deadline_s,
            )
            transport.abort()

    def settled(self, handler: Any) -> None:
        """The connection proved itself (or is gone): no deadline, no longer counted."""
        timer = self._pending.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def request_started(self, request: web.Request, websocket: bool) -> None:
        """Called by the middleware: a plain HTTP request with complete headers settles its connection; a
        WebSocket upgrade stays pending until its hello succeeds."""
        if not websocket:
            self.settled(request.protocol)


GUARD = web.AppKey("guard", ConnectionGuard)


def _abort(handler: Any) -> None:
    transport = getattr(handler, "transport", None)
    if transport is not None:
        transport.abort()


# ---------------------------------------------------------------------------------------------------- logging


class RepeatLimiter(logging.Filter):
    """Lets one record per (logger, message template) through every `every_s` seconds and notes how many it held
    back, so a flood (e.g. "Too many open files" on accept) cannot fill the log or the disk."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        last, held = self._seen.get(key, (-1e9, 0))
        if now - last < self.every_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar lines held back in the last {self.every_s:g} s)"
        return True


class QuietBadRequests(logging.Filter):
    """aiohttp logs a malformed request (bad request line, bad header) as ERROR with a traceback; it is the
    client's fault, so it becomes one INFO line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.msg}: {type(exc).__name__}: {str(exc)[:200]}"
            record.exc_info, record.exc_text = None, None
        return True


_LIMITER = RepeatLimiter()


def limited_log(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """Log through the repeat limiter even where the daemon's handlers were not installed (tests)."""
    record = logger.makeRecord(logger.name, level, "(security)", 0, msg, args, None)
    if logger.isEnabledFor(level) and _LIMITER.filter(record):
        logger.handle(record)


def install_log_rate_limit() -> None:
    """On every root handler: repeated lines are rate-limited, malformed HTTP is one INFO line (serve calls it)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatLimiter) for f in handler.filters):
            handler.addFilter(QuietBadRequests())
            handler.addFilter(RepeatLimiter())
