"""The caps on finished, unacknowledged jobs kept for resume (jobs/retention.py `KeptEndings`): per client, in all,
and counting only what is still unacknowledged."""

from __future__ import annotations

from job_records import job_record

from bridge_server.jobs.retention import KeptEndings


def test_the_oldest_go_first_per_client_and_in_all():
    kept = KeptEndings(keep=2, keep_total=3)
    assert kept.ended(job_record(1, "a")) == [] and kept.ended(job_record(2, "a")) == []
    assert kept.ended(job_record(3, "a")) == ["job-1"]  # the client's own oldest
    assert kept.ended(job_record(4, "b")) == []
    assert kept.ended(job_record(5, "c")) == ["job-2"]  # the oldest of all, whoever's it is
    assert kept.ended(job_record(6, "c")) == ["job-3"]


def test_an_editor_away_overnight_keeps_its_result_however_many_jobs_others_run_and_acknowledge():
    """The caps count what is still waiting: a studio's thousands of delivered jobs do not push out the one result
    an editor that went away has not collected yet."""
    kept = KeptEndings(keep=10, keep_total=3)
    waiting = job_record(0, "away")
    assert kept.ended(waiting) == []
    for n in range(1, 100):
        delivered = job_record(n, "studio")
        assert kept.ended(delivered) == []
        kept.gone(delivered)  # acknowledged
    assert kept.ended(job_record(100, "studio")) == [] and kept.ended(job_record(101, "studio")) == []
    assert kept.ended(job_record(102, "studio")) == ["job-0"]  # only now is it the oldest of more than three waiting
