"""The pieces of shared memory on loopback, one at a time: the wire form of a segment reference, the sealed
segment, the client's open checks, the per-connection pool and its caps."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from ace_protocol.codec import decode_client_message, decode_server_message, encode
from ace_protocol.errors import ProtocolError
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Alloc, Allocated, Hello, Release, Result, ShmReady, Submit, Welcome
from ace_protocol.shm import SegmentRef, SharedMemoryUnavailable, describe, read_segment, write_segment

from bridge_server.server import shared_memory
from bridge_server.server.sessions import _is_loopback

linux_only = pytest.mark.skipif(not shared_memory.AVAILABLE, reason="memfd segments are Linux-only")


def ready_segments(**kwargs) -> shared_memory.ConnectionSegments:
    segments = shared_memory.ConnectionSegments(
        enabled=True,
        max_bytes=kwargs.get("max_bytes", 64 << 20),
        max_segment_bytes=kwargs.get("max_segment_bytes", 32 << 20),
    )
    offer = segments.offer()
    assert offer is not None
    segments.confirm(read_segment(describe(offer)).decode())
    return segments


def test_a_segment_reference_round_trips_and_bad_ones_are_named():
    ref = SegmentRef("abc", 16, 4096, pid=12, fd=7, ino=99)
    assert SegmentRef.from_wire(ref.to_wire(), what="image") == ref
    assert SegmentRef.from_wire({"segment": "abc", "offset": 0, "length": 5}, what="image").pid is None
    for bad, needle in (
        ({"segment": "abc", "offset": -1, "length": 5}, "offset"),
        ({"segment": "abc", "offset": True, "length": 5}, "offset"),
        ({"segment": "", "offset": 0, "length": 5}, "segment"),
        ({"segment": "x" * 65, "offset": 0, "length": 5}, "segment"),
        ({"segment": "abc", "offset": 0, "length": "5"}, "length"),
        ("abc", "map"),
    ):
        with pytest.raises(ProtocolError, match=needle) as err:
            SegmentRef.from_wire(bad, what="submit.image")
        assert err.value.code.value == "bad_request"


def test_an_image_in_a_segment_must_say_exactly_as_many_bytes_as_its_size_needs():
    wire = {"w": 4, "h": 2, "format": "rgba8", "shm": {"segment": "abc", "offset": 0, "length": 32}}
    image = ImagePayload.from_wire(wire)
    assert image.shm is not None and image.nbytes == 32 and image.data == b""
    assert image.to_wire() == wire
    with pytest.raises(ProtocolError, match="carries 31"):
        ImagePayload.from_wire({**wire, "shm": {"segment": "abc", "offset": 0, "length": 31}})
    with pytest.raises(ProtocolError, match="data must be binary"):
        ImagePayload.from_wire({"w": 4, "h": 2, "format": "rgba8"})


def test_the_shared_memory_messages_survive_the_codec():
    ref = SegmentRef("seg", 0, 64 * 64 * 4)
    image = ImagePayload(64, 64, "rgba8", b"", shm=ref)
    for message in (
        Hello(client_id="c", client_name="n", client_version="1", protocol_versions=[1], shm=True),
        ShmReady(nonce="ab" * 16),
        Alloc(id="r1", size=1 << 20),
        Release(segments=["a", "b"]),
        Submit(id="r2", task="inpaint", image=image),
    ):
        assert decode_client_message(encode(message)) == message
    offer = {"segment": "p", "pid": 1, "fd": 3, "ino": 4, "size": 32}
    for message in (
        Welcome(server_version="1", protocol_version=1, session="s", limits={}, engine={}, tasks=[], shm=offer),
        Allocated(id="r1", segment=offer),
        Result(
            job_id="j",
            index=0,
            count=1,
            seed=1,
            image=ImagePayload(64, 64, "rgba8", b"", shm=SegmentRef("s", 0, 16384, 1, 3, 4)),
        ),
    ):
        assert decode_server_message(encode(message)) == message


def test_only_loopback_peers_count_as_this_machine():
    assert _is_loopback("127.0.0.1") and _is_loopback("127.8.9.10") and _is_loopback("::1")
    assert not _is_loopback("192.168.1.20") and not _is_loopback("?") and not _is_loopback("")


@linux_only
def test_a_segment_is_sealed_so_nobody_can_shrink_or_grow_it():
    segment = shared_memory.Segment(1 << 16)
    try:
        fd = os.open(f"/proc/{os.getpid()}/fd/{segment.fd}", os.O_RDWR)
        try:
            for size in (0, 100, 1 << 20):
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, size)
        finally:
            os.close(fd)
        ref = describe(segment.describe())
        write_segment(ref, [(0, b"pixels"), (100, memoryview(b"more"))])
        assert bytes(segment.pixels()[:6]) == b"pixels" and bytes(segment.pixels()[100:104]) == b"more"
        with pytest.raises(SharedMemoryUnavailable, match="do not fit"):
            write_segment(ref, [(ref.length - 2, b"abc")])
    finally:
        segment.close()


@linux_only
def test_the_client_refuses_a_descriptor_that_is_not_the_segment_it_was_told_about():
    segment = shared_memory.Segment(4096)
    try:
        described = segment.describe()
        with pytest.raises(SharedMemoryUnavailable, match="not the daemon's segment"):
            read_segment(describe({**described, "ino": described["ino"] + 1}))
        with pytest.raises(SharedMemoryUnavailable, match="cannot open"):
            read_segment(describe({**described, "fd": 9999}))
        with pytest.raises(SharedMemoryUnavailable, match="fewer than"):
            read_segment(SegmentRef(segment.id, 4000, 200, os.getpid(), segment.fd, segment.ino))
        with pytest.raises(SharedMemoryUnavailable):
            describe({"segment": "x", "size": 3})  # no pid/fd/ino
    finally:
        segment.close()


@linux_only
def test_a_wrong_nonce_keeps_shared_memory_off():
    segments = shared_memory.ConnectionSegments(enabled=True, max_bytes=1 << 20, max_segment_bytes=1 << 20)
    assert segments.offer() is not None
    with pytest.raises(ProtocolError, match="nonce"):
        segments.confirm("0" * 32)
    with pytest.raises(ProtocolError, match="not on"):
        segments.allocate(1000)
    assert shared_memory.ConnectionSegments(enabled=False, max_bytes=1, max_segment_bytes=1).offer() is None


@linux_only
def test_a_submit_reads_its_pixels_in_place_and_the_segment_returns_to_the_pool_when_the_job_lets_go():
    segments = ready_segments()
    granted = segments.allocate(64 * 64 * 4)
    first_id = granted.id
    pixels = np.arange(64 * 64 * 4, dtype=np.uint32).astype(np.uint8)
    write_segment(describe(granted.describe()), [(0, pixels)])
    submit = Submit(
        id="r", task="inpaint", image=ImagePayload(64, 64, "rgba8", b"", shm=SegmentRef(granted.id, 0, pixels.size))
    )
    resolved = segments.resolve(submit)
    assert resolved.image is not None and resolved.image.shm is None
    assert np.array_equal(np.frombuffer(resolved.image.data, np.uint8), pixels)
    assert segments.in_jobs == 1 and segments.held_count == 0
    del resolved, submit
    assert segments.in_jobs == 0 and segments.held_count == 1, "back in the pool, pages still warm"
    again = segments.allocate(64 * 64 * 4)
    assert again is granted and again.id != first_id, "reused, under a new id"
    segments.close()


@linux_only
def test_the_pool_keeps_the_segments_in_use_and_frees_idle_ones():
    segments = ready_segments()
    made = [segments.allocate(1 << 16) for _ in range(shared_memory.POOL_SIZE + 2)]
    for segment in made:
        segments.resolve(
            Submit(
                id="r",
                task="inpaint",
                image=ImagePayload(128, 128, "rgba8", b"", shm=SegmentRef(segment.id, 0, 1 << 16)),
            )
        )
    assert segments.held_count == shared_memory.POOL_SIZE, "the oldest ones were closed"
    assert all(s.fd is None for s in made[:2]) and all(s.fd is not None for s in made[2:])
    segments.trim(max_idle_s=60)
    assert segments.held_count == shared_memory.POOL_SIZE
    time.sleep(0.01)
    segments.trim(max_idle_s=0.001)
    assert segments.held_count == 0
    segments.close()


@linux_only
def test_big_results_go_into_segments_until_released_and_small_ones_stay_in_the_frame():
    segments = ready_segments()
    big = np.full((512, 512, 4), 7, np.uint8)
    message = Result(
        job_id="j", index=0, count=1, seed=1, image=ImagePayload(512, 512, "rgba8", memoryview(big).cast("B"))
    )
    shared = segments.export(message)
    assert shared.image.shm is not None and shared.image.data == b""
    assert read_segment(shared.image.shm) == big.tobytes()
    assert segments.held_count == 1
    segments.release_jobs(["j"])  # ack
    assert segments.held_count == 1 and segments.export(message).image.shm is not None  # pooled, reused
    small = Result(job_id="k", index=0, count=1, seed=1, image=ImagePayload(8, 8, "rgba8", bytes(256)))
    assert segments.export(small) is small
    capped = ready_segments(max_bytes=(1 << 20) - 1)
    assert capped.export(message) is message, "over the connection's cap the result goes in the frame"
    segments.close()
    capped.close()


@linux_only
def test_a_connection_cap_counts_what_the_client_holds_and_the_warm_pool_gives_way_first():
    segments = ready_segments(max_bytes=3 << 20, max_segment_bytes=2 << 20)
    with pytest.raises(ProtocolError, match="refused") as too_big:
        segments.allocate((2 << 20) + 1)
    assert too_big.value.code.value == "too_large"
    first = segments.allocate(2 << 20)
    with pytest.raises(ProtocolError, match="already holds"):
        segments.allocate(2 << 20)
    segments.resolve(
        Submit(
            id="r", task="inpaint", image=ImagePayload(1024, 512, "rgba8", b"", shm=SegmentRef(first.id, 0, 2 << 20))
        )
    )
    assert segments.held_count == 1  # pooled
    assert segments.allocate(2 << 20) is not first, "the idle pool is freed to make room"
    assert first.fd is None
    segments.close()


def test_without_fcntl_as_on_windows_the_daemon_starts_and_offers_no_shared_memory():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys; sys.modules['fcntl'] = None; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from bridge_server.server import shared_memory as m\n"
        "assert not m.AVAILABLE\n"
        "assert m.ConnectionSegments(enabled=True, max_bytes=1, max_segment_bytes=1).offer() is None\n"
        "from bridge_server.server.app import create_app\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(repo), str(repo / "shared")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
