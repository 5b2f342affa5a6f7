"""Who is connected: one `Connection` per WebSocket, one `ClientSession` per `client_id` (it outlives its
connections), and the `Hub` that routes queue events to whichever connection holds each client's session."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ace_protocol.codec import encode
from ace_protocol.errors import ErrorCode
from ace_protocol.messages import (
    Accepted,
    Cancelled,
    Done,
    Failed,
    Message,
    Progress,
    Queued,
    Result,
    Started,
    StatusReply,
)
from aiohttp import WSCloseCode, web

from bridge_server.jobs.job import Job
from bridge_server.server.offers import OfferBox
from bridge_server.server.shared_memory import ConnectionSegments, SegmentPool

log = logging.getLogger(__name__)


class BridgeWebSocket(web.WebSocketResponse):
    """aiohttp closes an oversized frame with 1009 but no reason; name it with our error code."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = ErrorCode.TOO_LARGE.value.encode()
        return await super().close(code=code, message=message, drain=drain)

    def raise_frame_limit(self, request: web.BaseRequest, max_msg_size: int) -> None:
        """Until `hello` succeeds a frame may be only a few KiB (nothing big is read or decoded before the token
        check); afterwards the announced limit applies. aiohttp's frame parser takes its limit when it is made, so
        a new one with the larger limit replaces it between two frames (right after the hello frame)."""
        from aiohttp._websocket.reader import WebSocketReader

        protocol = request.protocol
        if protocol is None or self._reader is None or getattr(self, "_parser", None) is None:
            return
        parser = WebSocketReader(self._reader, max_msg_size, compress=False, decode_text=self._decode_text)
        protocol._payload_parser = parser
        self._parser = parser


@dataclass
class Connection:
    ws: web.WebSocketResponse
    peer: str
    segments: ConnectionSegments
    #: This connection as a principal for queue shares (server/sessions.py, jobs/queue.py `admit`).
    principal: str = field(default_factory=lambda: "conn:" + secrets.token_hex(6))
    outbox: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    sender: asyncio.Task[None] | None = None
    #: A peer that reads nothing is disconnected once one frame could not be sent for this long, or once this many
    #: messages wait for it; its jobs and results stay for its next connection (resume).
    transport: Any = None
    stall_s: float = 30.0
    max_waiting: int = 10_000
    stalled: bool = False
    replay: asyncio.Task[None] | None = None  # the streamed replay of stored results (server/sessions.py)
    #: `status` answers made but not yet sent. Each lists the whole queue, so a client that asks without reading
    #: would otherwise pile up thousands of them (measured: +154 MiB for 10,000 with 60 jobs queued).
    status_waiting: int = 0
    max_status_waiting: int = 4
    #: `queued` position updates are coalesced: per job only the latest position, and only when it differs from
    #: what the client was last told, at most once per this many seconds for the whole connection. Under a flood
    #: of submits and cancels every one moved the editors' positions (measured: 130,343 updates sent to 16
    #: editors in one benchmark run), and each waited in the outbox ahead of the editor's own `accepted`.
    position_every_s: float = 0.25
    _positions: dict[str, Queued] = field(default_factory=dict)  # job_id -> latest position not yet sent
    _told: dict[str, int] = field(default_factory=dict)  # job_id -> position the client was last told
    _position_timer: asyncio.TimerHandle | None = None
    _positions_sent_at: float = float("-inf")

    def send(self, message: Message) -> None:
        if isinstance(message, Queued) and message.note is None:
            self._coalesce(message)
            return
        self._track(message)
        self._put(message)

    def _track(self, message: Message) -> None:
        """Keep the coalesced positions consistent with what else the client is told about a job."""
        job_id = getattr(message, "job_id", None)
        if not isinstance(job_id, str):
            return
        if isinstance(message, (Accepted, Queued)):
            self._positions.pop(job_id, None)
            self._told[job_id] = message.position
        elif isinstance(message, (Started, Done, Failed, Cancelled)):
            # The job left the queue: a position still waiting would arrive after it and contradict it.
            self._positions.pop(job_id, None)
            self._told.pop(job_id, None)

    def _coalesce(self, message: Queued) -> None:
        if self._told.get(message.job_id) == message.position:
            self._positions.pop(message.job_id, None)  # back where the client already thinks it is
            return
        self._positions[message.job_id] = message
        if self._position_timer is None:
            delay = max(0.0, self._positions_sent_at + self.position_every_s - time.monotonic())
            self._position_timer = asyncio.get_running_loop().call_later(delay, self._send_positions)

    def _send_positions(self) -> None:
        self._position_timer = None
        self._positions_sent_at = time.monotonic()
        pending, self._positions = self._positions, {}
        if self.stalled or self.ws.closed:
            return
        for message in pending.values():
            self._told[message.job_id] = message.position
            self._put(message)

    def close_positions(self) -> None:
        """Stop the pending position timer (the connection is gone)."""
        if self._position_timer is not None:
            self._position_timer.cancel()
            self._position_timer = None
        self._positions.clear()

    def _put(self, message: Message) -> None:
        if self.outbox.qsize() >= self.max_waiting and not self.stalled:
            self._drop(f"{self.max_waiting} messages wait for it")
        if isinstance(message, StatusReply):
            self.status_waiting += 1
        self.outbox.put_nowait(message)

    def status_backlog(self) -> bool:
        """Whether this client has asked for more `status` answers than it has read (the next gets a short refusal
        instead of another copy of the queue)."""
        return self.status_waiting >= self.max_status_waiting

    def _drop(self, why: str) -> None:
        self.stalled = True
        log.warning(
            "closed a connection from %s that stopped reading (%s); its results wait for it to resume", self.peer, why
        )
        if self.transport is not None:
            self.transport.abort()

    async def run_sender(self) -> None:
        while True:
            message = await self.outbox.get()
            if isinstance(message, StatusReply):
                self.status_waiting -= 1
            try:
                if message is None or self.ws.closed or self.stalled:
                    return
                if isinstance(message, Result):
                    message = self.segments.export(message)
                try:
                    await asyncio.wait_for(self.ws.send_bytes(encode(message)), self.stall_s)
                except asyncio.TimeoutError:
                    self._drop(f"nothing could be sent for {self.stall_s:g} s")
                    return
                except (ConnectionError, RuntimeError):
                    return
            finally:
                self.outbox.task_done()


@dataclass
class ClientSession:
    client_id: str
    session_id: str
    client_name: str = ""
    client_version: str = ""
    editor: str = ""
    person: str = ""  # whose named token the current connection proved ("" for the daemon's own token)
    previews: bool = False  # what the current connection's hello asked for
    connected_since: float = 0.0
    connection: Connection | None = None
    segment_pool: SegmentPool = field(default_factory=SegmentPool)  # warm shared-memory segments, across connections
    offers: str = ""  # how the current plug-in takes results sent from the panel (server/offers.py)
    documents: list[Any] = field(default_factory=list)  # its open documents, as its last `documents` said

    def summary(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_name": self.client_name,
            "client_version": self.client_version,
            "editor": self.editor,
            "person": self.person,
            "connected": self.connection is not None,
            "since": self.connected_since,
            # How this client's pixels travel, so a slow hand-over can be told apart at a glance.
            "pixels": "shared memory" if self.connection is not None and self.connection.segments.ready else "frames",
        }


class Hub:
    """Routes queue events to whichever connection currently holds each client's session."""

    def __init__(self) -> None:
        self.sessions: dict[str, ClientSession] = {}
        #: client_id -> SHA-256 of the resume secret its first holder got (or sent); resuming needs the secret.
        self.owners: dict[str, str] = {}
        self.on_change: list[Any] = []
        self.offers = OfferBox()  # results sent from the panel, until their editor answers (server/offers.py)

    def deliver(self, job: Job, message: Message) -> None:
        session = self.sessions.get(job.client_id)
        if session is not None and session.connection is not None:
            if isinstance(message, Progress) and message.preview is not None and not session.previews:
                message = replace(message, preview=None)  # the client reconnected without previews meanwhile
            session.connection.send(message)

    def wants_previews(self, client_id: str) -> bool:
        """Whether the client's current connection asked for previews (read-only; safe from the engine thread)."""
        session = self.sessions.get(client_id)
        return session is not None and session.connection is not None and session.previews

    def changed(self) -> None:
        for callback in list(self.on_change):
            callback()

    def connected(self) -> list[ClientSession]:
        return [s for s in self.sessions.values() if s.connection is not None]

    def forget_idle(self, keep: int, with_jobs: Callable[[], set[str]]) -> None:
        """Once there are more than `keep` sessions, forget the oldest disconnected ones that have nothing waiting
        (no job, no offer from the panel), with their resume secret. Without this a token
        holder that connects under a fresh client_id again and again grew the daemon by every session it left
        behind. Nothing is lost: a forgotten editor that comes back gets a new session, and a client_id with jobs
        keeps its owner through the jobs (`Job.owner`)."""
        if len(self.sessions) <= keep:
            return
        busy = with_jobs() | {client_id for client_id, waiting in self.offers.waiting.items() if waiting}
        # Oldest first: a session moves to the end each time its client connects (sessions.py).
        idle = [c for c, s in self.sessions.items() if s.connection is None and c not in busy]
        for client_id in idle[: len(self.sessions) - keep]:
            self.sessions.pop(client_id).segment_pool.close()
            self.owners.pop(client_id, None)
            self.offers.waiting.pop(client_id, None)

    async def trim_segment_pools(self, every_s: float = 10.0) -> None:
        """Free shared-memory segments no client has used for a while (runs for the daemon's lifetime)."""
        while True:
            await asyncio.sleep(every_s)
            for session in list(self.sessions.values()):
                session.segment_pool.trim()

    def close_segment_pools(self) -> None:
        for session in self.sessions.values():
            session.segment_pool.close()
