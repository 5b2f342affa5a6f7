"""A hostile local program, standard library only, so it runs as another user (`nobody`) under any Python.

Run as a script with one JSON argument; prints one JSON line of counts. Every loop is bounded by `seconds`.

    {"mode": "guess", "port": P, "hello_hex": "...", "seconds": 6, "threads": 100, "rotate": true,
     "abort_after": 0.3}

`guess`: each thread opens WebSocket connections (from a random 127.x.y.z source when `rotate`), sends the given
hello frame, answers the daemon's challenge with the `prove_hex` frame (a wrong proof: a guessed token) and reads
the verdict, each reply for at most `abort_after` seconds, then hangs up, as a guesser would that gives up early
instead of waiting out the throttle.
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

UPGRADE = (
    "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


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
    prove = ws_frame(bytes.fromhex(args["prove_hex"])) if args.get("prove_hex") else None
    deadline = time.monotonic() + args["seconds"]
    counts = {"unauthorized": 0, "rate_limited": 0, "welcome": 0, "no_answer": 0, "errors": 0, "attempts": 0}
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < deadline:
            source = (
                f"127.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
                if args.get("rotate")
                else None
            )
            outcome = "errors"
            try:
                sock = open_ws(port, source)
                try:
                    sock.sendall(frame)
                    sock.settimeout(args.get("abort_after", 5.0))
                    try:
                        _, payload = read_frame(sock)
                        if prove is not None and b"challenge" in payload:
                            sock.sendall(prove)
                            _, payload = read_frame(sock)
                        outcome = next(
                            (k for k in ("unauthorized", "rate_limited", "welcome") if k.encode() in payload), "errors"
                        )
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


def squat(args: dict) -> dict:
    """Listen on the daemon's port while it is down, answer each client's upgrade, record every byte it sends
    (unmasked), and reply to its first frame with `reply_hex` (a fake challenge, welcome or error)."""
    import base64
    import hashlib

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args["port"]))
    server.listen(8)
    server.settimeout(args.get("seconds", 30))
    print(json.dumps({"listening": True}), flush=True)
    received = []
    try:
        conn, _ = server.accept()
    except OSError:
        return {"received": []}
    conn.settimeout(5)
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
        received.append(head.hex())
        key = next(
            (
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            ),
            b"",
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        replied = False
        try:
            for _ in range(10):
                first = conn.recv(2)
                if len(first) < 2:
                    break
                n = first[1] & 0x7F
                if n == 126:
                    n = struct.unpack("!H", conn.recv(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", conn.recv(8))[0]
                mask = conn.recv(4) if first[1] & 0x80 else b"\0\0\0\0"
                data = b""
                while len(data) < n:
                    chunk = conn.recv(n - len(data))
                    if not chunk:
                        break
                    data += chunk
                received.append(bytes(b ^ mask[i % 4] for i, b in enumerate(data)).hex())
                if not replied:
                    reply = bytes.fromhex(args["reply_hex"])
                    conn.sendall(
                        bytes([0x82, 126]) + struct.pack("!H", len(reply)) + reply
                        if len(reply) >= 126
                        else bytes([0x82, len(reply)]) + reply
                    )
                    replied = True
        except OSError:
            pass
    return {"received": received, "uid": os.getuid()}


def http_squat(args: dict) -> dict:
    """Listen on the daemon's port while it is down and answer every HTTP request (up to `max_requests`) with
    `status` and the JSON `body`, recording each request whole (head and body)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args["port"]))
    server.listen(8)
    server.settimeout(args.get("seconds", 30))
    print(json.dumps({"listening": True}), flush=True)
    received = []
    body = json.dumps(args["body"]).encode()
    for _ in range(args.get("max_requests", 4)):
        try:
            conn, _ = server.accept()
        except OSError:
            break
        conn.settimeout(5)
        with conn:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(rest) < length:
                    chunk = conn.recv(length - len(rest))
                    if not chunk:
                        break
                    rest += chunk
                received.append((head + b"\r\n\r\n" + rest).hex())
                conn.sendall(
                    f"HTTP/1.1 {args.get('status', 200)} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
        server.settimeout(args.get("linger", 3))  # later requests come at once or not at all
    return {"received": received, "uid": os.getuid()}


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    modes = {"guess": guess, "squat": squat, "http_squat": http_squat}
    print(json.dumps(modes[request["mode"]](request)), flush=True)
