"""Queue positions under a flood: another client that submits and cancels as fast as it can moves an editor's
jobs back and forth, yet the editor hears of its positions at most a few times a second, and the last position it
was told is where its job really stands."""

from __future__ import annotations

import time

from ace_protocol.messages import Queued
from integration_helpers import collect, connect

from bridge_server.jobs.gate import Gate


def small_job(client, seed: int):
    return client.submit("generate", "a lighthouse", params={"seed": seed, "steps": 1, "width": 64, "height": 64})


def test_a_flood_of_submits_and_cancels_sends_an_editor_only_coalesced_positions(thread_daemon_factory):
    daemon = thread_daemon_factory(gate=Gate(paused=True))
    editor = connect(daemon, client_id="editor")
    flood = connect(daemon, client_id="flood")
    try:
        jobs = [small_job(editor, seed) for seed in range(3)]
        assert [job.position for job in jobs] == [0, 1, 2]
        # Each flood job is a new lane that goes ahead of the editor's second and third job, and each cancel
        # takes it out again: without coalescing that is one `queued` per job per submit and per cancel.
        seconds, started, cycles = 2.0, time.monotonic(), 0
        while time.monotonic() - started < seconds:
            small_job(flood, 1000 + cycles).cancel()
            cycles += 1
        flood_s = time.monotonic() - started
        assert cycles >= 20, "the flood should have moved the editor's jobs many times"
        time.sleep(0.6)  # the last coalesced update is out by now
        for job in jobs:
            job.cancel()
        for job, settled in zip(jobs, [0, 1, 2]):
            events = collect(job, timeout=30)
            assert events[-1].TYPE == "cancelled"
            positions = [e.position for e in events if isinstance(e, Queued)]
            # At most one update per 0.25 s window (plus the first, sent at once), however busy the queue.
            assert len(positions) <= flood_s / 0.25 + 2, (cycles, positions)
            # The last position it was told is where the job stood once the flood stopped.
            told = positions[-1] if positions else job.position
            assert told == settled, (cycles, positions)
    finally:
        editor.close()
        flood.close()
