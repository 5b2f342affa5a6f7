"""What survives a restart and for how long: rebuilding jobs from the journal, forgetting old unacknowledged ones.

Unfinished jobs found in the journal become `interrupted` (never silently dropped), except a running job whose
image the engine replicas still hold (`serve --ray`, `in_flight`): it stays running, its inputs taken back from the
replicas' keeper, for the queue to attach to. Finished, unacknowledged results wait for their client to resume
until `retention_s` has passed, after which they live only in history.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from ace_protocol.errors import ErrorCode

from bridge_server.jobs.job import Job, JobInputs, JobState, StoredResult
from bridge_server.jobs.journal import Journal
from bridge_server.store.history import History

INTERRUPTED_MESSAGE = "the daemon stopped while this job was queued or running; submit it again"


def restore_jobs(
    journal: Journal,
    history: History,
    now: float,
    retention_s: float,
    in_flight: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Job]:
    """Replay the journal, reopen it with only the records still kept, and return the jobs clients may resume.
    Jobs left `running` are those in `in_flight` (job_id -> {request: {job: EngineJob fields}}) that were running."""
    jobs: dict[str, Job] = {}
    keep: dict[str, dict[str, Any]] = {}
    for job_id, record in journal.replay().items():
        if record["acked"]:
            continue
        held = (in_flight or {}).get(job_id) if record["state"] == "running" else None
        job = _job_from_record(job_id, record, history, now, held)
        if job.finished is not None and now - job.finished > retention_s:
            continue
        jobs[job_id] = job
        keep[job_id] = record
    journal.open(keep)
    return jobs


def _job_from_record(
    job_id: str, record: dict[str, Any], history: History, now: float, held: dict[str, Any] | None = None
) -> Job:
    meta = record["job"]
    job = Job(
        id=job_id,
        client_id=meta["client_id"],
        task=meta["task"],
        prompt=meta.get("prompt", ""),
        params=meta.get("params", {}),
        seed=meta.get("seed", 0),
        created=meta.get("created", now),
        width=meta.get("width", 0),
        height=meta.get("height", 0),
        editor=meta.get("editor", ""),
        label=meta.get("label", ""),
        owner=str(meta.get("owner", "")),
        person=meta.get("person", ""),
    )
    for r in record["results"]:
        entry = r.get("entry")
        if isinstance(entry, str):
            prov = (history.meta(entry) or {}).get("provenance", {})
            job.results.append(StoredResult(r["index"], r["seed"], entry, prov, r.get("finished") or now))
    if held is not None:  # still on the replicas: the queue attaches to it
        engine_job = held["request"]["job"]
        job.state = JobState.RUNNING
        job.inputs = JobInputs(
            engine_job.get("image"), engine_job.get("mask"), list(engine_job.get("references") or [])
        )
        job.finished = None
        return job
    if record["state"] in ("queued", "running"):
        job.state = JobState.FAILED
        job.error = (ErrorCode.INTERRUPTED.value, INTERRUPTED_MESSAGE)
        record["state"] = "failed"
        record["error"] = {"code": job.error[0], "message": job.error[1]}
    else:
        job.state = JobState(record["state"])
        if record["error"]:
            job.error = (record["error"].get("code", "internal"), record["error"].get("message", ""))
    job.finished = job.results[-1].finished if job.results else now
    return job


def purge_expired(jobs: dict[str, Job], now: float, retention_s: float) -> list[Job]:
    """Forget finished, unacknowledged jobs past retention (their results stay in history); the jobs forgotten."""
    expired = [
        j for j in jobs.values() if j.state.finished and j.finished is not None and now - j.finished > retention_s
    ]
    for job in expired:
        del jobs[job.id]
    return expired


class KeptEndings:
    """Finished, unacknowledged jobs of one kind, kept for resume: at most `keep` per client and `keep_total` in
    all. `ended` names the older ones to forget as if acknowledged. The queue keeps two: jobs that ended with no
    result (their one terminal event went out when they ended, no picture to lose; a client that submits and
    cancels without acknowledging kept ~3 KB per job until retention ran out, 246,156 jobs, +712 MB, in
    `bench/hostile_load.py`) and jobs with results (those stay in history, as after retention). The total matters
    as much as the per-client cap: a token holder can take a fresh client_id whenever it likes."""

    def __init__(self, keep: int, keep_total: int) -> None:
        self.keep = keep
        self.keep_total = keep_total
        self._ended: dict[str, deque[str]] = {}  # per client, oldest first
        self._all: OrderedDict[str, str] = OrderedDict()  # job id -> client id, oldest first

    def ended(self, job: Job) -> list[str]:
        """Note that `job` has finished; the ids of older jobs to forget now (some may be acknowledged already: the
        caller skips those)."""
        ended = self._ended.setdefault(job.client_id, deque())
        ended.append(job.id)
        self._all[job.id] = job.client_id
        forget: list[str] = []
        while len(ended) > self.keep:
            forget.append(ended.popleft())
            del self._all[forget[-1]]
        while len(self._all) > self.keep_total:
            # The oldest overall is also the oldest of its client: both lists are in the order jobs ended.
            job_id, client_id = self._all.popitem(last=False)
            oldest = self._ended[client_id]
            oldest.popleft()
            if not oldest:
                del self._ended[client_id]
            forget.append(job_id)
        return forget

    def gone(self, job: Job) -> None:
        """`job` was acknowledged or expired: it no longer counts against the caps."""
        if self._all.pop(job.id, None) is None:
            return
        ended = self._ended[job.client_id]
        ended.remove(job.id)  # at most `keep` long
        if not ended:
            del self._ended[job.client_id]
