"""Tools for the adversarial suite: raw HTTP upgrades with hostile headers, raw WebSocket frames, engine wrappers
that fail on command, real mounts for disk faults, and a queue listener that turns daemon events into waits."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ace_protocol import PROTOCOL_VERSION
from ace_protocol.auth import AUTH_VERSION, new_nonce, proof_matches, token_id
from ace_protocol.auth import proof as auth_proof
from ace_protocol.client import BridgeClient
from ace_protocol.codec import decode_server_message, encode
from ace_protocol.messages import Challenge, Hello, Message, Prove
from pictures import gradient_image, gray_payload, rgba_payload, square_mask

__all__ = ["gray_payload", "rgba_payload", "square_mask"]  # re-exported for the adversarial tests

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# ------------------------------------------------------------------ raw HTTP


def raw_upgrade(
    port: int, host: str | None, headers: dict[str, str] | None = None, path: str = "/v1/ws", upgrade: bool = True
) -> tuple[int, bytes]:
    """Send one hand-written HTTP/1.1 request (any Host, even none) and return (status, head+body read)."""
    lines = [f"GET {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    if upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {WS_KEY}",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), data


# ------------------------------------------------------------------ raw WebSocket (websockets' sync client)


def raw_ws(daemon, max_size: int | None = 2**30):
    import inspect

    from websockets.sync.client import connect as ws_connect

    # The callers close it themselves; websockets 17 asks to be told so (older releases lack the keyword).
    legacy = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}
    return ws_connect(daemon.url, max_size=max_size, compression=None, open_timeout=15, **legacy)


def hello(token: str | None, client_id: str = "adversary", **extra: Any) -> Hello:
    """A protocol 2 hello: a fresh nonce and which token (its id), never the token itself."""
    return Hello(
        client_id=client_id,
        client_name="adversary",
        client_version="0",
        protocol_versions=[AUTH_VERSION],
        nonce=new_nonce(),
        token_id=token_id(token) if token else None,
        **extra,
    )


def protocol_1_hello(token: str | None, client_id: str = "old-plugin", **extra: Any) -> Hello:
    """What a plugin from before protocol 2 sends: the token itself, in the hello."""
    return Hello(
        client_id=client_id,
        client_name="old-plugin",
        client_version="0.0.9",
        protocol_versions=[PROTOCOL_VERSION],
        token=token,
        **extra,
    )


def handshake(
    send: Callable[[bytes], Any],
    recv: Callable[[], bytes],
    token: str | None,
    client_id: str = "adversary",
    check_server: bool = True,
    **extra: Any,
) -> Message:
    """Protocol 2 over any transport: hello, the daemon's challenge (its proof checked unless `check_server` is
    off, as a guesser would), our proof of `token`; returns the daemon's last answer (welcome or error)."""
    first = hello(token, client_id, **extra)
    send(encode(first))
    reply = decode_server_message(recv())
    if not isinstance(reply, Challenge):
        return reply
    if check_server:
        assert token and proof_matches(reply.proof, token, "server", str(first.nonce), reply.nonce), "not our daemon"
    send(encode(Prove(proof=auth_proof(token or "", "client", str(first.nonce), reply.nonce))))
    return decode_server_message(recv())


def ws_handshake(ws, token: str | None, client_id: str = "adversary", **extra: Any) -> Message:
    """`handshake` on a websockets client connection."""
    return handshake(ws.send, lambda: ws.recv(timeout=60), token, client_id, **extra)


def welcomed_ws(daemon, client_id: str = "adversary"):
    ws = raw_ws(daemon)
    reply = ws_handshake(ws, daemon.token, client_id)
    assert reply.TYPE == "welcome", reply
    return ws


def next_reply(ws, timeout: float = 60, skip: tuple[str, ...] = ("queued",)) -> Message:
    while True:
        message = decode_server_message(ws.recv(timeout=timeout))
        if message.TYPE not in skip:
            return message


def client_for(daemon, client_id: str, **kwargs: Any) -> BridgeClient:
    client = BridgeClient(
        daemon.url,
        daemon.token,
        client_id=client_id,
        client_name="adversary",
        editor="pytest",
        reconnect_timeout=kwargs.pop("reconnect_timeout", 0),
        **kwargs,
    )
    client.connect()
    return client


# ------------------------------------------------------------------ images


def gradient(width: int = 32, height: int = 32) -> np.ndarray:
    return gradient_image(width, height, blue=100)


def inpaint_kwargs(size: int = 32, steps: int = 1) -> dict[str, Any]:
    return {
        "image": rgba_payload(gradient(size, size)),
        "mask": gray_payload(square_mask(size, size)),
        "params": {"steps": steps, "seed": 7},
    }


# ------------------------------------------------------------------ daemon events as waits


class EventTap:
    """A queue listener inside the daemon: tests wait on job events as they happen, never on time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[tuple[str, str, Message]] = []  # (client_id, job_id, message)

    def __call__(self, job, message: Message) -> None:
        with self._cond:
            self.events.append((job.client_id, job.id, message))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str, str, Message], bool], timeout: float = 120) -> Message:
        def found():
            return next((m for c, j, m in self.events if predicate(c, j, m)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(
                    f"no matching daemon event within {timeout} s; saw {[m.TYPE for *_, m in self.events]}"
                )
            return found()

    def wait_type(self, job_id: str, type_: str, timeout: float = 120) -> Message:
        return self.wait_for(lambda c, j, m: j == job_id and m.TYPE == type_, timeout)


def tap(daemon) -> EventTap:
    listener = EventTap()
    daemon.call(lambda: daemon.state.queue.listeners.append(listener))
    return listener


# ------------------------------------------------------------------ engines that fail on command


class FaultyEngine:
    """Wraps a real engine; `arm(exc)` makes the next denoising step raise `exc` from inside the step callback, i.e.
    from within the engine's own loop, where a real CUDA allocation would fail."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "faulty")
        self._fault: BaseException | None = None
        self._lock = threading.Lock()

    def arm(self, exc: BaseException) -> None:
        with self._lock:
            self._fault = exc

    def available_tasks(self):
        return self.inner.available_tasks()

    def state(self):
        return self.inner.state()

    def run(self, job, on_step, is_cancelled):
        def step(done: int, total: int) -> None:
            on_step(done, total)  # the daemon's gate holds here
            with self._lock:
                fault, self._fault = self._fault, None
            if fault is not None:
                raise fault

        return self.inner.run(job, step, is_cancelled)

    def unload(self) -> None:
        self.inner.unload()

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------ real mounts (root only)


def need_root_for_mounts() -> None:
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("real tmpfs / read-only bind mounts need root (CI runs as root and does not skip)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_bind(source: Path, target: Path) -> Iterator[Path]:
    source.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill_up(folder: Path) -> None:
    """Write until the file system says ENOSPC."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.sync()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
