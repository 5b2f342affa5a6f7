"""After a daemon restart with engine replicas (serve --ray): a job the journal shows running and the replicas' keeper
still holds is taken back, inputs and all, instead of reported interrupted; the compacted journal keeps it running,
so a second crash finds it again. Without the keeper's word nothing changes. The real-cluster story is
tests/integration/test_ray_replicas.py."""

from __future__ import annotations

import json

import numpy as np

from bridge_server.jobs.job import JobState
from bridge_server.jobs.journal import Journal
from bridge_server.jobs.retention import restore_jobs
from bridge_server.store.history import History


def accepted(job_id: str) -> dict:
    job = {"id": job_id, "client_id": "krita-1", "task": "inpaint", "prompt": "a hat", "params": {"count": 2}}
    return {"ev": "accepted", "job_id": job_id, "job": {**job, "seed": 5, "created": 1.0, "width": 8, "height": 8}}


def write(path, events) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def held(index: int = 0) -> dict:
    image = np.full((8, 8, 3), 7, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    return {"index": index, "ended": "", "request": {"job": {"image": image, "mask": mask, "references": []}}}


def test_a_running_job_the_keeper_holds_stays_running_with_its_inputs(tmp_path):
    path = tmp_path / "journal.jsonl"
    write(
        path,
        [accepted("held"), {"ev": "started", "job_id": "held"}, accepted("gone"), {"ev": "started", "job_id": "gone"}],
    )
    history = History(tmp_path / "history")
    history.open()
    journal = Journal(path)
    jobs = restore_jobs(journal, history, now=10.0, retention_s=3600, in_flight={"held": held()})
    assert jobs["held"].state is JobState.RUNNING and jobs["held"].error is None
    assert jobs["held"].inputs is not None and int(jobs["held"].inputs.image[0, 0, 0]) == 7
    assert jobs["gone"].state is JobState.FAILED and jobs["gone"].error[0] == "interrupted"
    journal.write({"ev": "reattached", "job_id": "held", "index": 0, "found": "running"})
    journal.close()
    # The daemon dies again before the job ends: the compacted journal still says running, and when reattached.
    again = Journal(path).replay()
    assert again["held"]["state"] == "running" and again["held"]["reattached"] == [{"index": 0, "found": "running"}]
    assert again["gone"]["state"] == "failed"


def test_without_the_keeper_a_running_job_is_interrupted_as_before(tmp_path):
    path = tmp_path / "journal.jsonl"
    write(path, [accepted("a"), {"ev": "started", "job_id": "a"}])
    history = History(tmp_path / "history")
    history.open()
    jobs = restore_jobs(Journal(path), history, now=10.0, retention_s=3600)
    assert jobs["a"].state is JobState.FAILED and jobs["a"].error[0] == "interrupted"


def test_a_queued_job_is_not_taken_back_even_if_named(tmp_path):
    """Only a job that was running went to the replicas; a queued one's inputs were never anywhere but the daemon."""
    path = tmp_path / "journal.jsonl"
    write(path, [accepted("q")])
    history = History(tmp_path / "history")
    history.open()
    jobs = restore_jobs(Journal(path), history, now=10.0, retention_s=3600, in_flight={"q": held()})
    assert jobs["q"].state is JobState.FAILED
