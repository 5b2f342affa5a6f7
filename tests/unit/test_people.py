"""Named tokens (`ace-bridge token add/list/revoke`), per-person turns in the fair queue, and `status` lines for
engine replicas (issue 18)."""

from __future__ import annotations

import os
import stat

import pytest
from job_records import job_record

from bridge_server.cli.admin import print_replicas
from bridge_server.jobs.fairness import FairScheduler
from bridge_server.server.people import PeopleBook, PeopleError, add_person, load_people, revoke_person


def test_add_list_revoke_and_lookup(tmp_path):
    alice = add_person(tmp_path, "alice")
    bob = add_person(tmp_path, "bob")
    assert alice != bob and alice.startswith("ace_")
    assert set(load_people(tmp_path)) == {"alice", "bob"}
    assert stat.S_IMODE(os.stat(tmp_path / "people.json").st_mode) == 0o600
    book = PeopleBook(tmp_path)
    assert book.person_for(alice) == "alice" and book.person_for(bob) == "bob"
    assert book.person_for("ace_nobody") is None
    with pytest.raises(PeopleError):
        add_person(tmp_path, "alice")
    with pytest.raises(PeopleError):
        add_person(tmp_path, "../etc")
    assert revoke_person(tmp_path, "alice") and not revoke_person(tmp_path, "alice")
    assert book.person_for(alice) is None, "the book re-reads people.json when it changes"
    assert book.person_for(bob) == "bob"


def test_a_damaged_people_file_counts_as_nobody(tmp_path):
    (tmp_path / "people.json").write_text("{not json")
    assert load_people(tmp_path) == {}
    assert PeopleBook(tmp_path).person_for("anything") is None


def test_fairness_is_per_person_not_per_editor():
    """Alice with two editors gets the same turns as Bob with one; unnamed clients keep a turn each."""
    queue = FairScheduler()
    for n in range(3):
        queue.add(job_record(10 + n, "alice-krita", "alice"))
        queue.add(job_record(20 + n, "alice-gimp", "alice"))
    for n in range(3):
        queue.add(job_record(30 + n, "bob-krita", "bob"))
    order = [j.person for j in queue.order()]
    assert order[:6] == ["alice", "bob"] * 3
    taken = [queue.take_next().person for _ in range(4)]
    assert taken == ["alice", "bob", "alice", "bob"]
    assert queue.waiting_for("alice-krita") + queue.waiting_for("alice-gimp") == 4


def test_status_prints_one_line_per_replica(capsys):
    print_replicas(
        {
            "ray": {"address": "10.0.0.5:6379", "replicas": 2, "live": 1, "reattached": True, "restarts": 1},
            "replicas": [
                {
                    "replica": "abc",
                    "state": "ready",
                    "busy": True,
                    "pid": 7,
                    "node": "10.0.0.6",
                    "gpu": "NVIDIA H100",
                    "tier": "gpu",
                    "adapters": ["local", "fft"],
                    "jobs_done": 3,
                    "failures": 0,
                    "lost": 0,
                },
                {
                    "replica": "def",
                    "state": "taken out",
                    "busy": False,
                    "failures": 3,
                    "lost": 0,
                    "note": "taken out after 3 failures in a row: oom",
                },
            ],
        }
    )
    out = capsys.readouterr().out
    assert "1 of 2 replica(s) live at 10.0.0.5:6379 (reattached); 1 job restart(s)" in out
    assert "replica abc [ready, busy] pid 7 on 10.0.0.6 NVIDIA H100, tier gpu, adapters local,fft, 3 done" in out
    assert "replica def [taken out, -]" in out and "3 failure(s): taken out after 3 failures" in out
