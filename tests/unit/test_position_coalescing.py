"""A connection's `queued` updates: per job only the latest position, at most one batch per 0.25 s, never one
that contradicts a later `started`/`cancelled`, and none that repeats what the client was already told."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ace_protocol.messages import Accepted, Cancelled, Queued, Started

from bridge_server.server.hub import Connection


def sent(connection: Connection) -> list:
    out = []
    while not connection.outbox.empty():
        out.append(connection.outbox.get_nowait())
    return out


def new_connection() -> Connection:
    # Only the outbox is under test; no socket is written to (no sender runs).
    return Connection(ws=SimpleNamespace(closed=False), peer="test", segments=None)  # type: ignore[arg-type]


def test_a_client_gets_at_most_four_position_updates_a_second_however_busy_the_queue():
    async def story():
        connection = new_connection()
        connection.send(Accepted(id="1", job_id="J", position=5))
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        position = 5
        while loop.time() < end:  # the queue moves the job 1000s of times a second
            position = 6 if position != 6 else 7
            connection.send(Queued(job_id="J", position=position))
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        updates = [m for m in sent(connection) if isinstance(m, Queued)]
        assert 1 <= len(updates) <= 1.0 / 0.25 + 2
        assert updates[-1].position == position  # the latest position, not a stale one

    asyncio.run(story())


def test_a_position_back_where_the_client_was_told_is_not_sent_again():
    async def story():
        connection = new_connection()
        connection.send(Accepted(id="1", job_id="J", position=3))
        connection.send(Queued(job_id="J", position=2))
        connection.send(Queued(job_id="J", position=3))
        await asyncio.sleep(0.3)
        assert [m.TYPE for m in sent(connection)] == ["accepted"]

    asyncio.run(story())


def test_a_pending_position_never_arrives_after_the_job_started_or_was_cancelled():
    async def story():
        connection = new_connection()
        connection.send(Accepted(id="1", job_id="A", position=1))
        connection.send(Accepted(id="2", job_id="B", position=2))
        await asyncio.sleep(0.3)
        connection.send(Queued(job_id="A", position=0))
        connection.send(Queued(job_id="B", position=1))
        connection.send(Cancelled(job_id="B"))
        connection.send(Started(job_id="A"))
        await asyncio.sleep(0.3)
        assert [(m.TYPE, m.job_id) for m in sent(connection)] == [
            ("accepted", "A"),
            ("accepted", "B"),
            ("cancelled", "B"),
            ("started", "A"),
        ]

    asyncio.run(story())
