"""Shared memory on loopback, daemon side: pixels pass through sealed memfd segments instead of WebSocket frames.

Why: on loopback the frames themselves are the cost (masking, framing and two Python receive loops for 40 MB at
2048x2048); with a segment each side copies the pixels once. The WebSocket stays the control channel.

Safety, in the order a reviewer would ask:
- Only the daemon creates segments (memfd: anonymous, in no folder, gone with the last descriptor), so a client
  can never make it open a path. A client names segments only by the random ids handed to its own connection.
- Every segment is sealed against shrinking and growing before anyone else can open it, so a client cannot
  truncate it under the daemon's mapping (that would kill the daemon with SIGBUS).
- Offered only to loopback peers whose hello asks, and used only after the client proved, by echoing a nonce it
  read from a probe segment, that it sees the daemon's memory. Anyone who can open `/proc/<pid>/fd/*` of the
  daemon is the same user and can already read the token file.
- Bytes held per connection are capped; a segment id serves one submit, and result segments are given back on
  `release`, `ack` or disconnect.

Speed: a fresh memfd costs a page fault per 4 KiB on first touch (about 15 ms for 24 MB here, more than the copy),
so each client (`client_id`) keeps a small pool of segments whose pages are already there, across its connections.
A segment goes back to the pool when the job that read it lets go of its pixels (a finalizer on the array they are
views of) or when the client releases a result; pooled segments idle for `POOL_IDLE_S` are freed. Segments never
move between clients, so one editor never sees another's leftover pixels.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import sys
import threading
import time
import weakref
from dataclasses import replace
from typing import Any

import numpy as np
from ace_protocol.buffers import byte_view
from ace_protocol.errors import ErrorCode, ProtocolError, bad_request
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Result, Submit
from ace_protocol.shm import SegmentRef

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no fcntl, and no shared memory offered
    fcntl = None  # type: ignore[assignment]

#: memfd and file seals are Linux-only; elsewhere clients get frames.
AVAILABLE = (
    sys.platform.startswith("linux")
    and hasattr(os, "memfd_create")
    and fcntl is not None
    and hasattr(fcntl, "F_ADD_SEALS")
)
#: Below this, a frame is cheaper than the extra round trip of `alloc`.
MIN_SHARED_BYTES = 256 * 1024
#: Free segments kept per client, and how long an unused one is kept.
POOL_SIZE = 4
POOL_IDLE_S = 30.0
_NONCE_CHARS = 32


class Segment:
    """One sealed memfd, mapped by the daemon. `fd` stays open while the segment lives: it is what the client
    opens (as `/proc/<pid>/fd/<fd>`) each time the segment is handed out."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a segment needs at least one byte")
        self.id = secrets.token_hex(8)
        self.size = size
        fd = os.memfd_create(f"ace-bridge-{self.id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.ino = os.fstat(fd).st_ino
            self.mapping: mmap.mmap | None = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self.fd: int | None = fd
        self.idle_since = time.monotonic()

    def describe(self) -> dict[str, Any]:
        return {"segment": self.id, "pid": os.getpid(), "fd": self.fd, "ino": self.ino, "size": self.size}

    def renamed(self) -> Segment:
        """A new id for the next use, so a stale reference to the previous use cannot name it."""
        self.id = secrets.token_hex(8)
        return self

    def ref(self, offset: int, length: int) -> SegmentRef:
        return SegmentRef(self.id, offset, length, os.getpid(), self.fd, self.ino)

    def pixels(self) -> np.ndarray:
        """The whole segment as one array; views of it keep it alive (see `ConnectionSegments.resolve`)."""
        assert self.mapping is not None
        return np.frombuffer(self.mapping, np.uint8, count=self.size)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                pass  # a job still reads it; the mapping is freed with the last view
            self.mapping = None


class SegmentPool:
    """Free segments of one client (`client_id`), pages already in place, kept across its connections: the GIMP
    plug-in connects once per Generate, and a cold segment would cost it a page fault per 4 KiB every time."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._free: list[Segment] = []
        # Segments come back from the engine thread (a job dropping its arrays) as well as the event loop.
        self._lock = threading.Lock()
        self._closed = False

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._free)

    def __len__(self) -> int:
        return len(self._free)

    def take(self, size: int) -> Segment:
        """A warm segment that fits (not more than twice too big), under a new id; else a new one."""
        with self._lock:
            fits = [s for s in self._free if size <= s.size <= 2 * size]
            if fits:
                segment = min(fits, key=lambda s: s.size)
                self._free.remove(segment)
                return segment.renamed()
        return Segment(size)

    def give_back(self, segment: Segment) -> None:
        """When the pool is full the longest idle segment goes, so the pool follows the sizes in use."""
        evicted: Segment | None = segment
        with self._lock:
            if not self._closed and segment.mapping is not None:
                segment.idle_since = time.monotonic()
                self._free.append(segment)
                evicted = self._free.pop(0) if len(self._free) > self.size else None
        if evicted is not None:
            evicted.close()

    def trim(self, max_idle_s: float = POOL_IDLE_S) -> None:
        """Free segments nobody used for a while (the daemon calls this every few seconds)."""
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._free if now - s.idle_since > max_idle_s]
            self._free = [s for s in self._free if s not in stale]
        for segment in stale:
            segment.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for segment in free:
            segment.close()


class ConnectionSegments:
    """The segments of one WebSocket connection: the probe, those allocated for submits, and result segments.
    Freed ones go to the client's `SegmentPool`."""

    def __init__(
        self, *, enabled: bool, max_bytes: int, max_segment_bytes: int, pool: SegmentPool | None = None
    ) -> None:
        self.enabled = enabled and AVAILABLE
        self.ready = False
        self.max_bytes = max_bytes
        self.max_segment_bytes = max_segment_bytes
        self.pool = pool if pool is not None else SegmentPool()
        self._probe: Segment | None = None
        self._nonce = ""
        self._inputs: dict[str, Segment] = {}
        self._results: dict[str, Segment] = {}
        self._result_jobs: dict[str, list[str]] = {}
        self._in_jobs = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes a client holds without a job: allocated, undelivered results, and its warm pool."""
        with self._lock:
            mine = sum(s.size for s in (*self._inputs.values(), *self._results.values()))
        return mine + self.pool.held_bytes

    @property
    def held_count(self) -> int:
        with self._lock:
            return len(self._inputs) + len(self._results) + len(self.pool) + (self._probe is not None)

    @property
    def in_jobs(self) -> int:
        """Segments whose pixels a job still reads."""
        return self._in_jobs

    def _job_let_go(self, segment: Segment) -> None:
        with self._lock:
            self._in_jobs -= 1
        self.pool.give_back(segment)

    def trim(self, max_idle_s: float = POOL_IDLE_S) -> None:
        self.pool.trim(max_idle_s)

    # ---------------------------------------------------------------- handshake

    def offer(self) -> dict[str, Any] | None:
        """The probe segment for `welcome.shm`, or None when shared memory cannot be offered."""
        if not self.enabled:
            return None
        try:
            probe = Segment(_NONCE_CHARS)
        except OSError as exc:
            log.warning("shared memory unavailable: %s", exc)
            return None
        self._nonce = secrets.token_hex(_NONCE_CHARS // 2)
        assert probe.mapping is not None
        probe.mapping[:] = self._nonce.encode("ascii")
        self._probe = probe
        return probe.describe()

    def confirm(self, nonce: str) -> None:
        probe, self._probe = self._probe, None
        if probe is None:
            raise bad_request("no shared-memory probe is open on this connection")
        probe.close()
        if not secrets.compare_digest(nonce.encode(), self._nonce.encode()):
            raise bad_request("the shared-memory nonce does not match; pixels stay in frames on this connection")
        self.ready = True

    # ---------------------------------------------------------------- submits

    def allocate(self, size: int) -> Segment:
        if not self.ready:
            raise bad_request("shared memory is not on for this connection; send the pixels in the frame")
        if size < 1:  # docs/protocol.md §5: size is 1 .. max_frame_bytes; 0 or negative is a malformed request
            raise bad_request(f"alloc size must be at least 1 byte, not {size}")
        if size > self.max_segment_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"a segment of {size} bytes is refused; the limit is {self.max_segment_bytes}"
            )
        room = getattr(self, "daemon_room", None)  # the daemon-wide memory budget (server/state.py)
        refusal = room(size) if room is not None else None
        if refusal:
            raise ProtocolError(ErrorCode.TOO_LARGE, refusal)
        if self.held_bytes + size > self.max_bytes:
            self.trim(0.0)  # the warm pool gives way first
        if self.held_bytes + size > self.max_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"this connection already holds {self.held_bytes} bytes of shared memory; the limit "
                f"is {self.max_bytes}. Submit or release segments first.",
            )
        try:
            segment = self.pool.take(size)
        except OSError as exc:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"could not make a segment of {size} bytes: {exc}") from None
        self._inputs[segment.id] = segment
        return segment

    def resolve(self, message: Submit) -> Submit:
        """The submit with each segment reference replaced by a view of the daemon's mapping. Every segment it
        names is used up, whether or not the submit is then accepted: a segment id serves one submit. The segment
        goes back to the pool when the last view of its pixels is gone (job finished, or submit refused)."""
        named = {p.shm.segment for p in message.images() if p.shm is not None}
        if not named:
            return message
        with self._lock:
            segments = {name: self._inputs.pop(name, None) for name in named}
        arrays: dict[str, np.ndarray] = {}
        for name, segment in segments.items():
            if segment is not None:
                arrays[name] = segment.pixels()
                with self._lock:
                    self._in_jobs += 1
                weakref.finalize(arrays[name], self._job_let_go, segment)
        unknown = sorted(name for name, seg in segments.items() if seg is None)
        if unknown:
            raise bad_request(
                f"shared-memory segment {unknown[0]!r:.40} is not open on this connection "
                "(allocate one with 'alloc'; each serves one submit)"
            )

        def resolved(payload: ImagePayload, where: str) -> ImagePayload:
            if payload.shm is None:
                return payload
            ref, pixels = payload.shm, arrays[payload.shm.segment]
            if ref.offset + ref.length > pixels.size:
                raise bad_request(f"{where} reaches byte {ref.offset + ref.length} of a {pixels.size}-byte segment")
            return replace(payload, data=memoryview(pixels[ref.offset : ref.offset + ref.length]), shm=None)

        return message.with_images(resolved)

    # ---------------------------------------------------------------- results

    def export(self, message: Result) -> Result:
        """A big raw result is copied into a segment and the frame names it; otherwise the message is unchanged."""
        image = message.image
        if not self.ready or image.shm is not None or not image.is_raw:
            return message
        size = image.nbytes
        if size < MIN_SHARED_BYTES or self.held_bytes + size > self.max_bytes:
            return message
        try:
            segment = self.pool.take(size)
        except OSError as exc:
            log.warning("result sent in a frame: no segment of %d bytes (%s)", size, exc)
            return message
        assert segment.mapping is not None
        segment.mapping[:size] = byte_view(image.data)
        with self._lock:
            self._results[segment.id] = segment
            self._result_jobs.setdefault(message.job_id, []).append(segment.id)
        return replace(message, image=replace(image, data=b"", shm=segment.ref(0, size)))

    def release(self, segment_ids: list[str]) -> None:
        for segment_id in segment_ids:
            with self._lock:
                segment = self._results.pop(segment_id, None)
            if segment is not None:
                self.pool.give_back(segment)

    def release_jobs(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            with self._lock:
                segment_ids = self._result_jobs.pop(job_id, [])
            self.release(segment_ids)

    def close(self) -> None:
        """At the end of the connection: free what it still holds. Not into the pool: a client that went away
        may still write into a segment it was given, and a later job of the same client must not see that.
        Segments jobs still read go to the pool when the jobs let go of them."""
        with self._lock:
            segments = [*self._inputs.values(), *self._results.values()]
            if self._probe is not None:
                segments.append(self._probe)
            self._inputs.clear()
            self._results.clear()
            self._result_jobs.clear()
            self._probe = None
            self.ready = False
        for segment in segments:
            segment.close()
