"""Issue 7, hostile payloads: each gets a typed error, the connection and other clients carry on, memory stays flat.

Frames are packed by hand (msgpack of plain dicts) so that NaN, wrong types, lying sizes and absurd nesting reach
the daemon exactly as an attacker would send them. A `submit` that is refused names its request id so a client
waiting for the answer gets it at once.
"""

from __future__ import annotations

import io
import math
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from ace_protocol.client import JobError
from ace_protocol.images import ImagePayload
from adversarial_helpers import (
    client_for,
    gradient,
    inpaint_kwargs,
    next_reply,
    raw_ws,
    rss_bytes,
    square_mask,
    ws_handshake,
)
from daemon_fixture import ProcessDaemon, start_process_daemon
from PIL import Image
from websockets.exceptions import ConnectionClosed

SIZE = 32


@pytest.fixture(scope="module")
def process_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_root: Path) -> Iterator[ProcessDaemon]:
    """One real `serve --demo` subprocess for the module, so its RSS can be read from /proc."""
    daemon = start_process_daemon(tmp_path_factory.mktemp("payload-home"), tiny_root=tiny_model_root)
    yield daemon
    daemon.stop()


@pytest.fixture
def ws(process_daemon):
    socket = raw_ws(process_daemon)
    assert ws_handshake(socket, process_daemon.token, f"payload-attacker-{uuid.uuid4().hex[:8]}").TYPE == "welcome"
    yield socket
    socket.close()


def image_wire(array: np.ndarray, fmt: str = "rgba8") -> dict[str, Any]:
    return {"w": array.shape[1], "h": array.shape[0], "format": fmt, "data": array.tobytes()}


def submit_wire(**overrides: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "type": "submit",
        "id": "req-1",
        "task": "inpaint",
        "prompt": "a red square",
        "image": image_wire(gradient(SIZE, SIZE)),
        "mask": image_wire(square_mask(SIZE, SIZE), "gray8"),
        "params": {"steps": 1, "seed": 1},
    }
    wire.update(overrides)
    return wire


def send_raw(ws, data: bytes):
    ws.send(data)
    return next_reply(ws)


def send_wire(ws, wire: dict[str, Any]):
    return send_raw(ws, msgpack.packb(wire, use_bin_type=True))


def assert_typed(reply, code: str, *words: str, request_id: str | None = "req-1") -> None:
    assert reply.TYPE in ("failed", "error"), reply
    assert reply.code == code, reply
    for word in words:
        assert word in reply.message, reply.message
    if request_id is not None:
        assert reply.id == request_id, f"the refusal must name the request it answers: {reply}"


def still_serving(ws) -> None:
    reply = send_wire(ws, {"type": "status", "id": "alive"})
    assert reply.TYPE == "status_reply" and reply.id == "alive"


# ------------------------------------------------------------------ hand-made hostile images


def png_bytes(image: Image.Image, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save)
    return buf.getvalue()


def png_bomb(side: int = 8192) -> bytes:
    """A 1-bit all-black PNG: ~8 KB on the wire, side*side*4 bytes (268 MB at 8192) if decoded to RGBA."""
    return png_bytes(Image.new("1", (side, side)))


def webp_header_bomb(side: int) -> bytes:
    """A lossless WebP whose header claims side x side pixels (the pixel data is absent)."""
    bits = (side - 1) | ((side - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\0" * 10
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def encoded(data: bytes, fmt: str, w: int = SIZE, h: int = SIZE) -> dict[str, Any]:
    return {"w": w, "h": h, "format": fmt, "data": data}


# ------------------------------------------------------------------ oversized frames


def test_an_oversized_frame_closes_only_that_connection_with_1009(thread_daemon_factory):
    daemon = thread_daemon_factory(max_frame_bytes=64 * 1024)
    bystander = client_for(daemon, "bystander")
    try:
        with raw_ws(daemon) as attacker:
            assert ws_handshake(attacker, daemon.token, "big-sender").TYPE == "welcome"
            attacker.send(b"\x81" + b"\0" * (80 * 1024))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    attacker.recv(timeout=30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009 and closed.value.rcvd.reason == "too_large"
        assert bystander.status().TYPE == "status_reply"
        events = list(bystander.submit("inpaint", "after the attack", **inpaint_kwargs()).events(timeout=120))
        assert [e.TYPE for e in events][-1] == "done"
    finally:
        bystander.close()


def test_an_oversized_frame_before_hello_is_closed_too(thread_daemon_factory):
    daemon = thread_daemon_factory(max_frame_bytes=64 * 1024)
    with raw_ws(daemon) as attacker:
        attacker.send(b"\0" * (128 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            attacker.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert daemon.call(lambda: len(daemon.state.hub.sessions)) == 0


# ------------------------------------------------------------------ msgpack structure


def test_deeply_nested_msgpack_is_bad_request(ws):
    depth = 200_000
    nested = b"\x91" * depth + b"\x01"  # [[[[...1...]]]]
    frame = (
        b"\x83"
        + msgpack.packb("type")
        + msgpack.packb("status")
        + msgpack.packb("id")
        + msgpack.packb("n")
        + msgpack.packb("deep")
        + nested
    )
    assert_typed(send_raw(ws, frame), "bad_request", request_id=None)
    still_serving(ws)


def test_a_map_claiming_four_billion_entries_is_bad_request(ws):
    frame = b"\x82" + msgpack.packb("type") + msgpack.packb("status") + msgpack.packb("x") + b"\xdf\xff\xff\xff\xff"
    assert_typed(send_raw(ws, frame), "bad_request", request_id=None)
    still_serving(ws)


@pytest.mark.parametrize(
    "value",
    [list(range(20_000)), {f"k{i}": i for i in range(20_000)}, "x" * (9 * 1024 * 1024)],
    ids=["long-array", "wide-map", "9MB-string"],
)
def test_huge_containers_and_strings_are_bad_request(ws, value):
    assert_typed(send_wire(ws, {"type": "status", "id": "s", "junk": value}), "bad_request", request_id=None)
    still_serving(ws)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        b"\x81\xa4type\x2a",
        b"\x81\x01\xa4type",
        b"\xd9\x05\xff\xfe\xfd\xfc\xfb",
        b"\xc7\x01\x05\x00",
    ],
    ids=["empty", "never-used-byte", "array-not-map", "type-not-string", "int-key", "invalid-utf8", "ext-type"],
)
def test_malformed_frames_are_bad_request(ws, frame):
    assert_typed(send_raw(ws, frame), "bad_request", request_id=None)
    still_serving(ws)


def test_text_frames_are_refused(ws):
    ws.send('{"type": "status"}')
    assert_typed(next_reply(ws), "bad_request", "binary", request_id=None)
    still_serving(ws)


# ------------------------------------------------------------------ images


def test_raw_byte_count_that_does_not_match_the_size_is_bad_request(ws):
    short = {"w": SIZE, "h": SIZE, "format": "rgba8", "data": b"\0" * (SIZE * SIZE * 3)}
    assert_typed(send_wire(ws, submit_wire(image=short)), "bad_request", "image", "carries")
    long_mask = {"w": SIZE, "h": SIZE, "format": "gray8", "data": b"\0" * (SIZE * SIZE + 1)}
    assert_typed(send_wire(ws, submit_wire(mask=long_mask)), "bad_request", "mask")
    still_serving(ws)


def test_the_client_library_gets_the_refusal_instead_of_waiting(process_daemon):
    """A submit the daemon cannot even decode must still be answered under its id, or the caller hangs."""
    client = client_for(process_daemon, "lying-client")
    try:
        liar = ImagePayload(SIZE, SIZE, "rgba8", b"\0" * 10)
        with pytest.raises(JobError) as refused:
            client.submit("inpaint", "x", image=liar, timeout=20)
        assert refused.value.code == "bad_request"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("image", "code", "word"),
    [
        ({"w": 0, "h": SIZE, "format": "rgba8", "data": b""}, "bad_request", "at least 1"),
        ({"w": SIZE, "h": -5, "format": "rgba8", "data": b""}, "bad_request", "at least 1"),
        ({"w": 100_000, "h": 1, "format": "rgba8", "data": b"\0" * 400_000}, "too_large", "limit"),
        ({"w": 100_000, "h": 100_000, "format": "png", "data": b"\x89PNG"}, "too_large", "limit"),
        ({"w": 2**64 - 1, "h": 1, "format": "gray8", "data": b"\0"}, "too_large", "limit"),
        ({"w": 1.5, "h": SIZE, "format": "rgba8", "data": b""}, "bad_request", "integer"),
        ({"w": SIZE, "h": SIZE, "format": "tiff", "data": b"II*\0"}, "bad_request", "format"),
        ({"w": SIZE, "h": SIZE, "format": "rgba8", "data": "text"}, "bad_request", "binary"),
        ("not an image", "bad_request", "map"),
    ],
    ids=[
        "zero-width",
        "negative-height",
        "100000-wide",
        "100000-square-png",
        "u64-width",
        "float-width",
        "tiff",
        "data-not-bytes",
        "not-a-map",
    ],
)
def test_impossible_image_sizes_and_shapes_are_typed_errors(ws, image, code, word):
    assert_typed(send_wire(ws, submit_wire(image=image, mask=None, task="instruct")), code, word)
    still_serving(ws)


def test_png_decompression_bomb_is_too_large_and_never_expands(ws):
    # The payload claims a small image; the file's header says 8192x8192 (268 MB as RGBA).
    reply = send_wire(ws, submit_wire(image=encoded(png_bomb(), "png"), mask=None, task="instruct"))
    assert_typed(reply, "too_large", "8192x8192")
    still_serving(ws)


def test_webp_decompression_bomb_is_too_large(ws):
    reply = send_wire(ws, submit_wire(image=encoded(webp_header_bomb(16384), "webp"), mask=None, task="instruct"))
    assert_typed(reply, "too_large")
    still_serving(ws)


def test_png_with_a_huge_compressed_text_chunk_is_refused_or_ignored_without_blowing_up(ws):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * (64 * 1024 * 1024), zip=True)  # 64 MB of text in ~64 KB
    data = png_bytes(Image.fromarray(gradient(SIZE, SIZE)), pnginfo=info)
    assert len(data) < 1024 * 1024
    reply = send_wire(ws, submit_wire(image=encoded(data, "png"), mask=None, task="instruct"))
    # Pillow caps text chunks (MAX_TEXT_CHUNK); either the file is refused or the chunk is skipped and the job runs.
    assert reply.TYPE in ("accepted", "failed"), reply
    if reply.TYPE == "failed":
        assert reply.code == "bad_request"
    still_serving(ws)


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_truncated_images_are_bad_request(ws, fmt):
    buf = io.BytesIO()
    Image.fromarray(gradient(SIZE, SIZE)[..., :3]).save(buf, format=fmt.upper())
    data = buf.getvalue()
    reply = send_wire(ws, submit_wire(image=encoded(data[: len(data) // 2], fmt), mask=None, task="instruct"))
    assert_typed(reply, "bad_request", "not a readable")
    still_serving(ws)


def test_an_encoded_image_that_lies_about_its_size_is_bad_request(ws):
    data = png_bytes(Image.fromarray(gradient(SIZE * 2, SIZE)))
    reply = send_wire(ws, submit_wire(image=encoded(data, "png"), mask=None, task="instruct"))
    assert_typed(reply, "bad_request", "says")


def test_pickle_bytes_as_an_image_are_never_unpickled(ws, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Exploit())
    reply = send_wire(ws, submit_wire(image=encoded(data, "png"), mask=None, task="instruct"))
    assert_typed(reply, "bad_request")
    assert not marker.exists()


def test_too_many_references_are_bad_request(ws):
    ref = image_wire(gradient(8, 8))
    reply = send_wire(ws, submit_wire(task="reference_edit", references=[ref] * 50))
    assert_typed(reply, "bad_request", "at most")


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("guidance", math.nan),
        ("guidance", math.inf),
        ("guidance", -math.inf),
        ("guidance", -1.0),
        ("guidance", 1e308),
        ("steps", -1),
        ("steps", 0),
        ("steps", 10**9),
        ("steps", 2**63),
        ("steps", 2.5),
        ("steps", True),
        ("steps", "28"),
        ("seed", -2),
        ("seed", 2**40),
        ("count", 0),
        ("count", 1000),
        ("feather", -1),
        ("max_tokens", -4096),
        ("max_tokens", 10**12),
    ],
)
def test_nan_inf_negative_and_absurd_parameters_are_bad_request_naming_the_parameter(ws, name, value):
    reply = send_wire(ws, submit_wire(params={"steps": 1, name: value}))
    assert_typed(reply, "bad_request", f"'{name}'")
    still_serving(ws)


def test_width_for_tasks_without_an_image_is_range_checked(ws):
    wire = submit_wire(task="generate", image=None, mask=None, params={"steps": 1, "width": -64, "height": 64})
    assert_typed(send_wire(ws, wire), "bad_request", "'width'")
    wire = submit_wire(task="generate", image=None, mask=None, params={"steps": 1, "width": 100_000, "height": 64})
    assert_typed(send_wire(ws, wire), "bad_request", "'width'")


def test_unknown_parameters_are_refused_naming_the_parameter(ws):
    reply = send_wire(ws, submit_wire(params={"steps": 1, "stpes": 4}))
    assert_typed(reply, "bad_request", "'stpes'")
    reply = send_wire(ws, submit_wire(params={"steps": 1, "__class__": {}}))
    assert_typed(reply, "bad_request", "__class__")


def test_unknown_top_level_fields_are_ignored_for_forward_compatibility(ws):
    """Documented: newer clients may add optional message fields; an older daemon ignores them."""
    reply = send_wire(ws, submit_wire(future_field={"anything": [1, 2, 3]}, another=b"\0" * 16))
    assert reply.TYPE == "accepted" and reply.id == "req-1"
    while reply.TYPE not in ("done", "failed", "cancelled"):
        reply = next_reply(ws, timeout=120, skip=())
    assert reply.TYPE == "done"


def test_a_one_megabyte_unicode_prompt_is_bad_request(ws):
    prompt = "描" * (1024 * 1024 // 3)  # ~1 MB of UTF-8
    assert_typed(send_wire(ws, submit_wire(prompt=prompt)), "bad_request", "prompt", "limit")
    still_serving(ws)


def test_unknown_task_and_wrong_types_are_typed(ws):
    assert_typed(send_wire(ws, submit_wire(task="../../etc/passwd")), "unknown_task")
    assert_typed(send_wire(ws, submit_wire(params=[1, 2])), "bad_request", "params")
    assert_typed(send_wire(ws, submit_wire(prompt=12)), "bad_request", "prompt")
    assert_typed(send_wire(ws, {"type": "cancel", "job_id": "nope", "id": "req-1"}), "bad_request")
    assert_typed(
        send_wire(ws, {"type": "shutdown", "id": "req-1"}), "bad_request", "unknown message type", request_id=None
    )


# ------------------------------------------------------------------ memory


def _barrage(ws) -> None:
    bomb = png_bomb()
    for _ in range(3):
        for wire in (
            submit_wire(image=encoded(bomb, "png"), mask=None, task="instruct"),
            submit_wire(image=encoded(webp_header_bomb(16384), "webp"), mask=None, task="instruct"),
            submit_wire(image={"w": 2048, "h": 2048, "format": "rgba8", "data": b"\0" * (2048 * 2048 * 4 - 1)}),
            submit_wire(prompt="é" * 500_000),
            submit_wire(params={"guidance": math.nan}),
            {"type": "status", "id": "s", "junk": list(range(20_000))},
        ):
            reply = send_wire(ws, wire)
            assert reply.TYPE in ("failed", "error"), reply


def test_memory_stays_bounded_under_repeated_hostile_payloads(process_daemon, ws):
    pid = process_daemon.process.pid
    _barrage(ws)  # warm-up: allocator pools, imports, caches
    before = rss_bytes(pid)
    for _ in range(4):
        _barrage(ws)
    after = rss_bytes(pid)
    assert after - before < 48 * 1024 * 1024, f"RSS grew {(after - before) / 2**20:.1f} MiB"
    still_serving(ws)
