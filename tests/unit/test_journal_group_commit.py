"""The journal's fsync is shared and off the event loop: many submits waiting together cost a few fsyncs, not one
each on the loop, and whatever `durable()` returned for is on disk."""

from __future__ import annotations

import asyncio
import os
import threading

from bridge_server.jobs import journal as journal_module
from bridge_server.jobs.journal import Journal


def test_concurrent_submits_share_fsyncs_that_run_off_the_event_loop(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open({})
    real_fsync, calls = os.fsync, []

    def watched_fsync(fd: int) -> None:
        calls.append(threading.current_thread() is threading.main_thread())
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", watched_fsync)

    async def submit(n: int) -> None:
        journal.write({"ev": "accepted", "job_id": f"job-{n}", "job": {"id": f"job-{n}"}})
        await journal.durable()

    async def story() -> None:
        await asyncio.gather(*(submit(n) for n in range(200)))

    asyncio.run(story())
    assert calls, "the events were never synced"
    assert len(calls) < 20, f"{len(calls)} fsyncs for 200 submits waiting together"
    assert not any(calls), "an fsync ran on the event loop's thread"
    assert len(journal.replay()) == 200
    journal.close()


def test_a_write_from_a_worker_thread_is_synced_at_once(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open({})
    real_fsync, calls = os.fsync, []
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    journal.write({"ev": "accepted", "job_id": "j", "job": {"id": "j"}})  # no event loop here
    assert len(calls) == 1
    journal.close()
