"""The jobs a plug-in sent, newest first: where each came from and what it brought back (to apply it again)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .jobs import ResultImage

#: Job states as a plug-in tracks them (the daemon's are authoritative; these only mirror its events).
STATES = ("submitted", "queued", "running", "done", "failed", "cancelled")


@dataclass
class JobRecord:
    """One job: the request, where its result goes (document, region, anchor layer) and its results."""

    job_id: str
    doc_key: str
    task: str
    prompt: str
    params: dict[str, Any]
    region: tuple[int, int, int, int]
    source: str
    anchor_node: str | None
    results: list[ResultImage] = field(default_factory=list)
    state: str = "submitted"
    message: str = ""
    layer_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


def redelivered_record(job_id: str, results: Sequence[ResultImage]) -> JobRecord:
    """A job that finished while the editor was away: only its results (and their provenance) are known."""
    first = results[0].provenance if results else {}
    return JobRecord(job_id, "", str(first.get("task", "?")), str(first.get("prompt", "(finished while away)")),
                     dict(first.get("params") or {}), (0, 0, 0, 0), "image", None, results=list(results),
                     state="done")


class History:
    """Newest first, at most `limit` jobs (their pixels stay in memory for Apply again)."""

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self.records: list[JobRecord] = []

    def add(self, record: JobRecord) -> None:
        self.records.insert(0, record)
        del self.records[self.limit:]

    def find(self, job_id: str) -> JobRecord | None:
        return next((r for r in self.records if r.job_id == job_id), None)

    def with_results(self) -> list[JobRecord]:
        return [r for r in self.records if r.results]

    def last_seed(self) -> int | None:
        """The seed of the newest result, for "reuse the last seed"."""
        done = self.with_results()
        return done[0].results[0].seed if done else None

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> JobRecord:
        return self.records[index]
