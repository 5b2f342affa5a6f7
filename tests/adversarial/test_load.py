"""A short run of bench/load.py against an in-process daemon: clients with random cancels and reconnects; every job
ends exactly once at its client and the journal shows round robin. Seeded: a failure names the seed to replay with
`python bench/load.py --clients 6 --jobs 8 --seed N`."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [11])
def test_load_every_job_ends_exactly_once_and_round_robin_holds(thread_daemon_factory, seed):
    load = _load_module()
    daemon = thread_daemon_factory()
    # Heavier than the defaults on purpose: more cancels and reconnects in a short run.
    report = asyncio.run(
        load.run_load(daemon.url, daemon.token, clients=6, jobs=8, seed=seed, cancel_p=0.2, disconnect_p=0.2, window=3)
    )
    assert report.problems == [], f"seed {seed}: {report.problems}"
    counts = report.outcome_counts()
    assert sum(counts.values()) == 6 * 8 and "bad" not in counts
    assert counts["result"] > 0 and report.cancels_sent > 0 and report.reconnects > 0
    assert load.check_fairness(daemon.config.journal_path) == []


def test_the_fairness_check_catches_a_client_that_jumps_the_queue(tmp_path):
    """The checker itself: B waits while A starts twice; and a client's jobs out of order."""
    import json

    load = _load_module()

    def accepted(job, client):
        return {"ev": "accepted", "job_id": job, "job": {"client_id": client}}

    events = [
        accepted("a1", "A"),
        accepted("a2", "A"),
        accepted("b1", "B"),
        {"ev": "started", "job_id": "a1"},
        {"ev": "started", "job_id": "a2"},
        {"ev": "started", "job_id": "b1"},
    ]
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(json.dumps(e) for e in events))
    assert any("B waited while A started 2" in p for p in load.check_fairness(journal))
    events = [accepted("a1", "A"), accepted("a2", "A"), {"ev": "started", "job_id": "a2"}]
    journal.write_text("\n".join(json.dumps(e) for e in events))
    assert any("before its earlier job" in p for p in load.check_fairness(journal))
