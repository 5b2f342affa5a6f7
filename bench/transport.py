"""Transport benchmark: what the protocol costs on loopback, next to the floor and to the usual PNG/base64/JSON.

    python bench/transport.py [--sizes 512,2048,4096] [--repeats 5]

For each region size (square RGBA region + 8-bit mask + 1024x1024 RGBA reference) it times, in one run:
  (a) floor:   the same request bytes over a plain TCP socket to an echo server that answers with the result's
               bytes (region RGBA);
  (b) bridge:  the real daemon app (create_app, aiohttp, real WebSocket) and the real blocking client
               (BridgeClient): submit -> `result` received, with the engine replaced by an identity engine defined
               here (returns the region's RGB), so only transport, validation, compositing and the history write
               (PNG + JSON, before `result`, by design) are measured. Pixels pass through the daemon's shared-memory
               segments, as they do for any client on the daemon's (Linux) machine;
  (bf) frames: (b) with shared memory off (a second client, same daemon, same rounds): pixels in WebSocket frames,
               as for a daemon on another machine or a client that cannot open the segments;
  (c) PNG:     PNG-encode the three images, base64 them into JSON, POST to a small aiohttp endpoint that decodes
               them and answers the region as PNG/base64 in JSON; the client decodes it.
It prints the median of --repeats round trips after one warm-up, the ratios b/a and c/b, and for one size a
breakdown of where (b)'s time goes (measured by calling the same functions directly).

  (b0) before: with --before, (b) is also timed, in the same rounds, with the code paths of the previous release
               switched back on inside this process: history PNG at level 1 + fsync before `result` (no background
               recompression), frames packed whole by msgpack and sent unfragmented, the old strided make_result,
               and the client copying the arrays with tobytes(). The same daemon and connection serve both.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import http.client
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "shared")]

import ace_protocol.client  # noqa: E402
import numpy as np  # noqa: E402
from ace_protocol.client import BridgeClient  # noqa: E402
from ace_protocol.codec import decode_client_message, decode_server_message, encode, encode_fragments  # noqa: E402
from ace_protocol.images import ImagePayload  # noqa: E402
from ace_protocol.messages import Result, Submit  # noqa: E402
from ace_protocol.tasks import TASKS  # noqa: E402
from aiohttp import web  # noqa: E402
from PIL import Image  # noqa: E402

import bridge_server.jobs.runner  # noqa: E402
import bridge_server.server.sessions  # noqa: E402
from bridge_server.config import ServerConfig  # noqa: E402
from bridge_server.engine.base import EngineResult  # noqa: E402
from bridge_server.imaging.codecs import encode_png, encode_png_stored, to_array  # noqa: E402
from bridge_server.imaging.compositing import make_result  # noqa: E402
from bridge_server.server.app import create_app  # noqa: E402
from bridge_server.server.state import STATE  # noqa: E402

REF_SIDE = 1024
FRAME_LIMIT = 512 * 1024 * 1024


class IdentityEngine:
    """Implements bridge_server/engine/base.py's Engine: one step, returns the region's RGB unchanged."""

    name = "identity"

    def available_tasks(self) -> list[str]:
        return list(TASKS)

    def state(self) -> dict[str, Any]:
        return {"state": "loaded", "model": "identity", "device": "cpu"}

    def run(self, job, on_step, is_cancelled) -> EngineResult:
        on_step(1, 1)
        assert job.image is not None
        return EngineResult(rgb=job.image[..., :3])

    def unload(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_inputs(side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth content (like a photo region) rather than noise, so PNG sizes are realistic.
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = np.empty((side, side, 4), np.uint8)
    image[..., 0] = (255 * x).astype(np.uint8)
    image[..., 1] = (255 * y).astype(np.uint8)
    image[..., 2] = (127 + 127 * np.sin(8 * x + 5 * y)).astype(np.uint8)
    image[..., :3] = np.clip(image[..., :3].astype(np.int16) + rng.integers(-3, 4, (side, side, 3)), 0, 255)
    image[..., 3] = 255
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255
    ref = np.ascontiguousarray(make_ref(seed))
    return image, mask, ref


def make_ref(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    ref = np.full((REF_SIDE, REF_SIDE, 4), 255, np.uint8)
    ref[..., :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    return ref


# ------------------------------------------------------------------ servers in a background loop


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def serve(self, app: web.Application) -> int:
        async def start() -> int:
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        return self.run(start())

    def close(self) -> None:
        for runner in self.runners:
            self.run(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def png_b64(array: np.ndarray, level: int = 6) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def from_png_b64(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text)), formats=["PNG"]))


def png_json_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.json()

        def work() -> dict[str, str]:
            image = from_png_b64(body["image"])
            mask = from_png_b64(body["mask"])
            from_png_b64(body["reference"])
            out = np.empty(image.shape[:2] + (4,), np.uint8)
            out[..., :3] = image[..., :3]
            out[..., 3] = mask
            return {"image": png_b64(out)}

        return web.json_response(await asyncio.to_thread(work))

    app = web.Application(client_max_size=FRAME_LIMIT)
    app.router.add_post("/echo", echo)
    return app


def raw_echo_server(reply_bytes: Callable[[], int]) -> tuple[socket.socket, threading.Thread]:
    """Reads one length-prefixed request per round, answers `reply_bytes()` bytes (the region as RGBA)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                header = _recv_exact(conn, 8)
                if header is None:
                    return
                length = int.from_bytes(header, "big")
                if _recv_exact(conn, length) is None:
                    return
                size = reply_bytes()
                conn.sendall(size.to_bytes(8, "big"))
                conn.sendall(bytes(size))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _recv_exact(conn: socket.socket, length: int) -> bytearray | None:
    buf = bytearray(length)
    view = memoryview(buf)
    got = 0
    while got < length:
        n = conn.recv_into(view[got:], min(length - got, 16 * 1024 * 1024))
        if n == 0:
            return None
        got += n
    return buf


# ------------------------------------------------------------------ the three measurements


def time_raw(conn: socket.socket, request: bytes) -> float:
    started = time.perf_counter()
    conn.sendall(len(request).to_bytes(8, "big"))
    conn.sendall(request)
    header = _recv_exact(conn, 8)
    assert header is not None
    assert _recv_exact(conn, int.from_bytes(header, "big")) is not None
    return time.perf_counter() - started


# ------------------------------------------------------------------ the previous release's paths (--before)


def _old_encode(message) -> bytes:
    return msgpack.packb(message.to_wire(), use_bin_type=True)


def _old_make_result(rgb: np.ndarray, mask: np.ndarray | None, feather: int) -> np.ndarray:
    from bridge_server.imaging.compositing import feathered_alpha

    height, width = rgb.shape[:2]
    out = np.empty((height, width, 4), np.uint8)
    out[..., :3] = rgb[..., :3]
    out[..., 3] = feathered_alpha(mask, (height, width), feather)
    return out


class Paths:
    """Switches the daemon's and client's module-level functions between this release and the previous one."""

    def __init__(self, history) -> None:
        self.history = history
        self.new = (
            ace_protocol.client.encode_fragments,
            bridge_server.server.sessions.encode,
            bridge_server.jobs.runner.make_result,
        )

    def use(self, before: bool) -> None:
        encode_client, encode_daemon, make = self.new
        if before:
            encode_client = lambda message: [_old_encode(message)]  # noqa: E731  (one unfragmented frame)
            encode_daemon = _old_encode
            make = _old_make_result
        ace_protocol.client.encode_fragments = encode_client  # type: ignore[assignment]
        bridge_server.server.sessions.encode = encode_daemon  # type: ignore[assignment]
        bridge_server.jobs.runner.make_result = make  # type: ignore[assignment]
        self.history.deferred_compress = not before


def _payload(array: np.ndarray, fmt: str, before: bool) -> ImagePayload:
    height, width = array.shape[:2]
    # The client hands the daemon a view of its array (what `ace-bridge edit` does); before, it copied it.
    data = array.tobytes() if before else memoryview(np.ascontiguousarray(array)).cast("B")
    return ImagePayload(width, height, fmt, data)


def time_bridge(
    client: BridgeClient, image: np.ndarray, mask: np.ndarray, ref: np.ndarray, before: bool = False
) -> float:
    side = image.shape[0]
    started = time.perf_counter()
    handle = client.submit(
        "reference_edit",
        "identity",
        image=_payload(image, "rgba8", before),
        mask=_payload(mask, "gray8", before),
        references=[_payload(ref, "rgba8", before)],
        params={"steps": 1, "seed": 1, "feather": 0},
    )
    elapsed = None
    for event in handle.events(timeout=300):
        if event.TYPE == "result":
            elapsed = time.perf_counter() - started
            assert event.image.width == side
        elif event.TYPE in ("failed", "cancelled"):
            raise RuntimeError(f"bridge job ended with {event}")
    if elapsed is None:
        raise RuntimeError("no result")
    client.ack(handle.id)  # type: ignore[arg-type]
    return elapsed


def time_png_json(port: int, image: np.ndarray, mask: np.ndarray, ref: np.ndarray) -> float:
    started = time.perf_counter()
    body = json.dumps({"image": png_b64(image), "mask": png_b64(mask), "reference": png_b64(ref)}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/echo", body, {"Content-Type": "application/json", "Host": f"127.0.0.1:{port}"})
    reply = json.loads(conn.getresponse().read())
    out = from_png_b64(reply["image"])
    conn.close()
    assert out.shape == image.shape
    return time.perf_counter() - started


def breakdown(image: np.ndarray, mask: np.ndarray, ref: np.ndarray, history_dir: Path) -> list[tuple[str, float]]:
    """The pieces of (b), the shared-memory path, timed by calling the same functions the daemon and client call
    (warm segments, as after the first job of a client). Names in parentheses are not on that path: the frames
    path's own steps (bf), background work, or the previous release's steps."""
    import os

    from ace_protocol.shm import SegmentRef, describe, read_segment, write_segment

    from bridge_server.server import shared_memory

    side = image.shape[0]
    parts: list[tuple[str, float]] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = fn()
        parts.append((name, time.perf_counter() - started))
        return value

    views = [_payload(image, "rgba8", False), _payload(mask, "gray8", False), _payload(ref, "rgba8", False)]
    total = sum(v.nbytes for v in views)
    segments = shared_memory.ConnectionSegments(enabled=True, max_bytes=2**32, max_segment_bytes=2**31)
    offer = segments.offer()
    if offer is None:
        raise RuntimeError("shared memory is not available here")
    segments.confirm(read_segment(describe(offer)).decode())
    path = history_dir / "bench.png"

    def write(data: Any, sync: bool) -> None:
        with open(path, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def one_round() -> tuple[Any, np.ndarray, Result]:
        parts.clear()
        granted = timed("daemon: alloc (a warm segment from the pool)", lambda: segments.allocate(total))
        ref_all = describe(granted.describe())
        offsets = [0, views[0].nbytes, views[0].nbytes + views[1].nbytes]
        timed(
            "client: copy the pixels into the segment",
            lambda: write_segment(ref_all, [(o, v.data) for o, v in zip(offsets, views)]),
        )
        shared = [
            ImagePayload(v.width, v.height, v.format, b"", shm=SegmentRef(granted.id, o, v.nbytes))
            for o, v in zip(offsets, views)
        ]
        submit = Submit(
            id="r1",
            task="reference_edit",
            prompt="identity",
            image=shared[0],
            mask=shared[1],
            references=[shared[2]],
            params={"steps": 1, "feather": 0},
        )
        frame = timed("client: encode the submit (no pixels)", lambda: encode(submit))
        message = timed(
            "daemon: decode + validate + views of the segment",
            lambda: segments.resolve(decode_client_message(frame, max_pixels=2**26)),
        )
        arr = timed("daemon: wire -> numpy (views)", lambda: to_array(message.image, max_pixels=2**26))
        m = to_array(message.mask, max_pixels=2**26, gray=True)
        rgba = timed("daemon: result RGBA (make_result)", lambda: make_result(arr[..., :3], m, 0))
        png = timed("daemon: history PNG, stored (level 0)", lambda: encode_png_stored(rgba))
        timed("daemon: history PNG write (no fsync)", lambda: write(png, False))
        timed("daemon: history JSON write + fsync", lambda: write(b"{}" * 200, True))
        result = Result(
            job_id="j", index=0, count=1, seed=1, image=ImagePayload(side, side, "rgba8", memoryview(rgba).cast("B"))
        )
        exported = timed("daemon: result into a segment", lambda: segments.export(result))
        out = timed("daemon: encode the result (no pixels)", lambda: encode(exported))
        back = decode_server_message(out)
        timed("client: decode + copy the result out of the segment", lambda: read_segment(back.image.shm))
        segments.release([back.image.shm.segment])
        return png, rgba, result

    one_round()  # fills the pool, as a client's first job does
    png, rgba, result = one_round()
    segments.close()
    segments.pool.close()

    framed = Submit(
        id="r1",
        task="reference_edit",
        prompt="identity",
        image=views[0],
        mask=views[1],
        references=[views[2]],
        params={"steps": 1, "feather": 0},
    )
    pieces = timed("(frames: client frame pieces, views of the arrays)", lambda: encode_fragments(framed))
    whole = b"".join(pieces)
    timed("(frames: daemon msgpack decode + validate)", lambda: decode_client_message(whole, max_pixels=2**26))
    timed("(frames: daemon encode result, one copy of the pixels)", lambda: encode(result))
    timed("(frames: client msgpack decode result)", lambda: decode_server_message(encode(result)))
    timed("(not done: fsync of the level-0 PNG)", lambda: write(png, True))
    timed(
        "(background, 1 s later: level-1 PNG encode, one thread)",
        lambda: encode_png(rgba, compress_level=1, parallel=False),
    )
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,2048,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--breakdown-size", type=int, default=2048)
    parser.add_argument(
        "--before", action="store_true", help="also time (b) with the previous release's paths (b0), in the same rounds"
    )
    parser.add_argument("--no-png-json", action="store_true", help="skip (c), the slow one")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ace-transport-") as tmp:
        loops = LoopThread()
        config = ServerConfig(
            config_dir=Path(tmp) / "config",
            data_dir=Path(tmp) / "data",
            port=0,
            token="bench",
            engine_factory=IdentityEngine,
            idle_unload_s=None,
            max_pixels=max(*sizes, REF_SIDE) ** 2,
            max_frame_bytes=FRAME_LIMIT,
        )
        bridge_app = create_app(config)
        bridge_port = loops.serve(bridge_app)
        history = bridge_app[STATE].history
        paths = Paths(history)
        png_port = loops.serve(png_json_app())
        current_reply = [0]
        raw_server, _ = raw_echo_server(lambda: current_reply[0])
        raw = socket.create_connection(raw_server.getsockname())
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        url = f"ws://127.0.0.1:{bridge_port}/v1/ws"
        client = BridgeClient(
            url,
            "bench",
            client_id="bench-transport",
            reconnect_timeout=0,
            max_frame_bytes=FRAME_LIMIT,
            shared_memory=True,
        )
        frames_client = BridgeClient(
            url,
            "bench",
            client_id="bench-transport-frames",
            reconnect_timeout=0,
            max_frame_bytes=FRAME_LIMIT,
            shared_memory=False,
        )
        client.connect()
        frames_client.connect()
        if not client.shared_memory_active:
            print(
                f"note: shared memory is not available here ({client.shared_memory_problem}); (b) uses frames too",
                flush=True,
            )
        try:
            for side in sizes:
                image, mask, ref = make_inputs(side)
                request = image.tobytes() + mask.tobytes() + ref.tobytes()
                current_reply[0] = side * side * 4
                times: dict[str, list[float]] = {"a": [], "b": [], "bf": [], "b0": [], "c": []}
                for repeat in range(args.repeats + 1):  # the first round warms up
                    got = {"a": time_raw(raw, request)}
                    runs = [("b", client, False), ("bf", frames_client, False)]
                    if args.before:
                        runs.append(("b0", frames_client, True))
                    for key, which, before in runs:
                        paths.use(before)
                        got[key] = time_bridge(which, image, mask, ref, before)
                        history.wait_background()  # so one round's recompression does not overlap the next
                    paths.use(False)
                    if not args.no_png_json:
                        got["c"] = time_png_json(png_port, image, mask, ref)
                        gc.collect()  # (c)'s big strings must not be collected during the next round's (a) or (b)
                    if repeat:
                        for key, value in got.items():
                            times[key].append(value)
                med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
                rows.append((side, med["a"], med["b"], med["bf"], med["b0"], med["c"], len(request)))
                print(
                    f"{side}x{side}: raw {med['a'] * 1000:.1f} ms, bridge {med['b'] * 1000:.1f} ms, "
                    f"bridge frames {med['bf'] * 1000:.1f} ms, bridge before {med['b0'] * 1000:.1f} ms, "
                    f"png/json {med['c'] * 1000:.1f} ms",
                    flush=True,
                )
            parts = []
            if args.breakdown_size:
                image, mask, ref = make_inputs(args.breakdown_size)
                parts = breakdown(image, mask, ref, Path(tmp))
        finally:
            client.close()
            frames_client.close()
            raw.close()
            raw_server.close()
            loops.close()
    print()
    print(
        "| region | request MB | (a) raw TCP ms | (b0) before ms | (bf) frames ms | (b) ACE Bridge ms "
        "| (c) PNG+base64+JSON ms | b0/a | bf/a | b/a | c/b |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for side, a, b, bf, b0, c, nbytes in rows:
        print(
            f"| {side}² | {nbytes / 2**20:.1f} | {a * 1000:.1f} | {b0 * 1000:.1f} | {bf * 1000:.1f} | {b * 1000:.1f} "
            f"| {c * 1000:.1f} | {b0 / a:.2f} | {bf / a:.2f} | {b / a:.2f} | {c / b:.1f} |"
        )
    if parts:
        total = sum(t for name, t in parts if not name.startswith("("))
        print()
        print(
            f"Breakdown of (b), shared memory, at {args.breakdown_size}² (pieces timed alone; sum "
            f"{total * 1000:.1f} ms):"
        )
        print("| step | ms | share |")
        print("|---|---|---|")
        for name, t in parts:
            share = "" if name.startswith("(") else f"{100 * t / total:.0f} %"
            print(f"| {name} | {t * 1000:.1f} | {share} |")
        b_here = [b for side, _a, b, _bf, _b0, _c, _n in rows if side == args.breakdown_size]
        if b_here:
            print(
                f"| rest of (b): the small frames, journal writes, thread hand-offs | "
                f"{(b_here[0] - total) * 1000:.1f} | |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
