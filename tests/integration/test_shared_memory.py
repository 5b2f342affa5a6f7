"""Shared memory on loopback: a client on the daemon's machine hands over big pixel buffers through the daemon's
sealed memfd segments instead of WebSocket frames, gets the same results, and falls back to frames whenever the
segments cannot be used. Real daemon, real tiny model."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ace_protocol import client as client_module
from ace_protocol.client import JobError
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Alloc, Allocated, Error, ShmReady
from ace_protocol.shm import SegmentRef, SharedMemoryUnavailable
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, result_array, types

from bridge_server.server import shared_memory

pytestmark = pytest.mark.skipif(not shared_memory.AVAILABLE, reason="memfd segments are Linux-only")

# 512x384 RGBA is 768 KiB: above the size where the client uses shared memory.
WIDTH, HEIGHT = 512, 384


def big_inpaint(client, seed: int = 5):
    image, mask = gradient_image(WIDTH, HEIGHT), ellipse_mask(WIDTH, HEIGHT)
    return client.submit(
        "inpaint",
        "a red hat",
        image=ImagePayload(WIDTH, HEIGHT, "rgba8", image.tobytes()),
        mask=gray_payload(mask),
        params={"seed": seed, "steps": 1},
    )


def result_of(handle) -> np.ndarray:
    events = collect(handle, timeout=120)
    assert types(events)[-2:] == ["result", "done"], types(events)
    return result_array(events[-2])


def connection_segments(daemon, client_id: str) -> shared_memory.ConnectionSegments:
    session = daemon.state.hub.sessions[client_id]
    assert session.connection is not None
    return session.connection.segments


def count_calls(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(client_module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(client_module, name, counted)
    return calls


def test_a_big_inpaint_goes_through_shared_memory_and_matches_the_same_job_sent_in_frames(
    thread_daemon_factory, monkeypatch
):
    daemon = thread_daemon_factory()
    writes, reads = count_calls(monkeypatch, "write_segment"), count_calls(monkeypatch, "read_segment")
    shared = connect(daemon, "shared-client")
    framed = connect(daemon, "framed-client", shared_memory=False)
    try:
        assert shared.shared_memory_active, shared.shared_memory_problem
        assert not framed.shared_memory_active
        reads.clear()  # the probe read at connect
        via_segments = result_of(big_inpaint(shared))
        assert (len(writes), len(reads)) == (1, 1), "request and result should each pass through one segment"
        via_frames = result_of(big_inpaint(framed))
        assert (len(writes), len(reads)) == (1, 1), "the framed client must not touch segments"
        assert via_segments.shape == (HEIGHT, WIDTH, 4)
        assert np.array_equal(via_segments, via_frames)
    finally:
        shared.close()
        framed.close()


def test_segments_return_to_the_pool_once_the_job_and_the_client_are_done_with_them(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon, "pool-client")
    try:
        handle = big_inpaint(client)
        result_of(handle)
        client.ack(handle.id)
        segments = connection_segments(daemon, "pool-client")
        assert daemon.call(lambda: segments.in_jobs) == 0, "the finished job must let go of its input segment"
        pooled = daemon.call(lambda: segments.held_count)
        assert 1 <= pooled <= shared_memory.POOL_SIZE
        result_of(big_inpaint(client, seed=6))  # reuses warm segments instead of making new ones
        assert daemon.call(lambda: segments.held_count) == pooled
        daemon.call(lambda: segments.trim(0.0))
        assert daemon.call(lambda: segments.held_count) == 0
    finally:
        client.close()


def test_a_client_that_cannot_open_the_segments_uses_frames_and_still_gets_its_result(
    thread_daemon_factory, monkeypatch
):
    def no_proc(ref):
        raise SharedMemoryUnavailable("cannot open /proc/1/fd/3: No such file or directory")

    monkeypatch.setattr(client_module, "read_segment", no_proc)  # a sandboxed editor (Flatpak, another namespace)
    daemon = thread_daemon_factory()
    client = connect(daemon, "sandboxed-client")
    try:
        assert not client.shared_memory_active
        assert "/proc" in client.shared_memory_problem
        assert result_of(big_inpaint(client)).shape == (HEIGHT, WIDTH, 4)
        refused = client._request(Alloc(id="", size=1 << 20))
        assert isinstance(refused, Error) and refused.code == "bad_request", "no segments before the probe passed"
    finally:
        client.close()


def test_a_result_segment_that_cannot_be_read_is_redelivered_in_frames(thread_daemon_factory, monkeypatch):
    daemon = thread_daemon_factory()
    client = connect(daemon, "unlucky-client")
    try:
        assert client.shared_memory_active
        real = client_module.read_segment

        def fails_once(ref):
            monkeypatch.setattr(client_module, "read_segment", real)
            raise SharedMemoryUnavailable("segment vanished")

        monkeypatch.setattr(client_module, "read_segment", fails_once)
        patch = result_of(big_inpaint(client))
        assert patch.shape == (HEIGHT, WIDTH, 4) and patch[..., 3].max() == 255
        assert not client.shared_memory, "after a failed read the client stays on frames"
    finally:
        client.close()


def test_a_submit_naming_a_segment_the_daemon_did_not_hand_out_is_refused_and_the_connection_lives_on(
    thread_daemon_factory,
):
    daemon = thread_daemon_factory()
    client = connect(daemon, "forger")
    try:
        size = WIDTH * HEIGHT * 4
        forged = ImagePayload(WIDTH, HEIGHT, "rgba8", b"", shm=SegmentRef("0123456789abcdef", 0, size))
        with pytest.raises(JobError) as refused:
            client.submit("inpaint", "x", image=forged, mask=gray_payload(ellipse_mask(WIDTH, HEIGHT)))
        assert refused.value.code == "bad_request" and "not open on this connection" in str(refused.value)

        granted = client._request(Alloc(id="", size=size))
        assert isinstance(granted, Allocated)
        beyond = ImagePayload(WIDTH, HEIGHT, "rgba8", b"", shm=SegmentRef(granted.segment["segment"], 64, size))
        with pytest.raises(JobError, match="reaches byte"):
            client.submit("inpaint", "x", image=beyond, mask=gray_payload(ellipse_mask(WIDTH, HEIGHT)))
        with pytest.raises(JobError, match="not open on this connection"):  # a segment serves one submit
            client.submit("inpaint", "x", image=beyond, mask=gray_payload(ellipse_mask(WIDTH, HEIGHT)))

        assert result_of(big_inpaint(client)).shape == (HEIGHT, WIDTH, 4)
    finally:
        client.close()


def test_a_client_cannot_shrink_a_segment_under_the_daemon(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon, "shrinker")
    try:
        granted = client._request(Alloc(id="", size=1 << 20))
        assert isinstance(granted, Allocated)
        segment = granted.segment
        fd = os.open(f"/proc/{segment['pid']}/fd/{segment['fd']}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 16)  # would make the daemon's mapping fault (SIGBUS) if it were allowed
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 1 << 30)
        finally:
            os.close(fd)
        assert client.status().engine["state"]  # the daemon is alive and answering
    finally:
        client.close()


def test_segment_requests_beyond_the_connection_cap_are_refused_as_too_large(thread_daemon_factory):
    daemon = thread_daemon_factory(shared_memory_max_bytes=4 << 20)
    client = connect(daemon, "hoarder")
    try:
        assert isinstance(client._request(Alloc(id="", size=3 << 20)), Allocated)
        refused = client._request(Alloc(id="", size=2 << 20))
        assert isinstance(refused, Error) and refused.code == "too_large"
        assert "limit" in refused.message
        too_big = client._request(Alloc(id="", size=daemon.config.max_frame_bytes + 1))
        assert isinstance(too_big, Error) and too_big.code == "too_large"
    finally:
        client.close()


def test_a_wrong_probe_nonce_leaves_shared_memory_off(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon, "guesser", shared_memory=False)
    try:
        client._send(ShmReady(nonce="0" * 32))  # no probe was offered to this connection
        refused = client._request(Alloc(id="", size=1 << 20))
        assert isinstance(refused, Error) and refused.code == "bad_request"
    finally:
        client.close()


def test_a_daemon_with_shared_memory_switched_off_offers_none(thread_daemon_factory):
    daemon = thread_daemon_factory(shared_memory=False)
    client = connect(daemon, "plain-client")
    try:
        assert client.welcome is not None and client.welcome.shm is None
        assert not client.shared_memory_active
        assert result_of(big_inpaint(client)).shape == (HEIGHT, WIDTH, 4)
    finally:
        client.close()


def test_a_submit_whose_segment_the_daemon_no_longer_holds_is_sent_again_in_frames(thread_daemon_factory, monkeypatch):
    """As after a reconnect between `alloc` and `submit`: the new connection does not know the old segment."""
    from dataclasses import replace

    daemon = thread_daemon_factory()
    client = connect(daemon, "reconnected-client")
    real = client._into_shared_memory

    def stale(message, timeout):
        shared = real(message, timeout)
        assert shared.image is not None and shared.image.shm is not None
        return replace(shared, image=replace(shared.image, shm=replace(shared.image.shm, segment="f" * 16)))

    monkeypatch.setattr(client, "_into_shared_memory", stale)
    try:
        assert result_of(big_inpaint(client)).shape == (HEIGHT, WIDTH, 4)
    finally:
        client.close()


def test_a_plugin_that_connects_for_every_generate_keeps_its_warm_segments(thread_daemon_factory, monkeypatch):
    """The GIMP plug-in runs once per Generate; its segments stay with its client id, not with the connection."""
    daemon = thread_daemon_factory()
    made: list[int] = []
    real_segment = shared_memory.Segment.__init__

    def counting(self, size):
        made.append(size)
        real_segment(self, size)

    monkeypatch.setattr(shared_memory.Segment, "__init__", counting)
    for generate in range(3):
        client = connect(daemon, "gimp-profile-1")
        try:
            handle = big_inpaint(client, seed=generate)
            result_of(handle)
            client.ack(handle.id)
        finally:
            client.close()
        if generate == 0:
            first_run = len(made)
    pool = daemon.state.hub.sessions["gimp-profile-1"].segment_pool
    assert len(pool) >= 1, "warm segments wait in the pool between connections"
    big = [size for size in made if size > 32]  # leave out the probes (one per connection)
    assert len(big) == first_run - 1, f"only the first Generate should make segments, made {made}"
