"""A hostile local program, standard library only, so it runs as another user (`nobody`) under any Python.

Run as a script with one JSON argument; prints one JSON line of counts. Every loop is bounded by `seconds`.

    {"mode": "guess", "port": P, "hello_hex": "...", "seconds": 6, "threads": 100, "rotate": true,
     "abort_after": 0.3}

`guess`: each thread opens WebSocket connections (from a random 127.x.y.z source when `rotate`), sends the given
hello frame (a wrong token) and reads one reply frame for at most `abort_after` seconds, then hangs up, as a
guesser would that gives up early instead of waiting out the throttle.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import threading
import time

UPGRADE = ("GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked client frame (FIN set)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 1 << 16 else _mask_big(payload, mask)
    return head + mask + body


def _mask_big(payload: bytes, mask: bytes) -> bytes:
    key = int.from_bytes((mask * ((len(payload) + 3) // 4))[: len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")


def open_ws(port: int, source: str | None = None, timeout: float = 10.0, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if rcvbuf:  # a reader that takes almost nothing off the wire
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(UPGRADE.format(port=port).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during upgrade")
        data += chunk
    if b" 101 " not in data.split(b"\r\n", 1)[0]:
        raise ConnectionError(data.split(b"\r\n", 1)[0].decode("latin-1"))
    return sock


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame."""

    def exact(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    b1, b2 = exact(2)
    n = b2 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    return b1 & 0x0F, exact(n)


def guess(args: dict) -> dict:
    port, frame = args["port"], ws_frame(bytes.fromhex(args["hello_hex"]))
    deadline = time.monotonic() + args["seconds"]
    counts = {"unauthorized": 0, "rate_limited": 0, "welcome": 0, "no_answer": 0, "errors": 0, "attempts": 0}
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < deadline:
            source = (f"127.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
                      if args.get("rotate") else None)
            outcome = "errors"
            try:
                sock = open_ws(port, source)
                try:
                    sock.sendall(frame)
                    sock.settimeout(args.get("abort_after", 5.0))
                    try:
                        _, payload = read_frame(sock)
                        outcome = next((k for k in ("unauthorized", "rate_limited", "welcome")
                                        if k.encode() in payload), "errors")
                    except TimeoutError:
                        outcome = "no_answer"
                finally:
                    sock.close()
            except OSError:
                outcome = "errors"
            with lock:
                counts["attempts"] += 1
                counts[outcome] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.get("threads", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args["seconds"] + 30)
    counts["uid"] = os.getuid()
    return counts


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps({"guess": guess}[request["mode"]](request)), flush=True)
