"""A job record as the queue and its bookkeeping see it, for unit tests that need many (no image, no engine)."""

from __future__ import annotations

from bridge_server.jobs.job import Job


def job_record(n: int, client_id: str, person: str = "") -> Job:
    """Job `job-<n>` of `client_id` (and of `person`, for a named token), created at time n."""
    return Job(
        id=f"job-{n}",
        client_id=client_id,
        task="generate",
        prompt="p",
        params={},
        seed=0,
        created=float(n),
        width=64,
        height=64,
        person=person,
    )
