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
    return JobRecord(
        job_id,
        "",
        str(first.get("task", "?")),
        str(first.get("prompt", "(finished while away)")),
        dict(first.get("params") or {}),
        (0, 0, 0, 0),
        "image",
        None,
        results=list(results),
        state="done",
    )


class History:
    """Newest first, at most `limit` jobs (their pixels stay in memory for Apply again)."""

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self.records: list[JobRecord] = []

    def add(self, record: JobRecord) -> None:
        self.records.insert(0, record)
        del self.records[self.limit :]

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


class RecentPrompts:
    """The prompts a painter used, most recent first, without duplicates (compared ignoring case and spacing),
    at most `limit`; stored as a plain list of strings (`to_list` / `from_list`) in the plug-in's settings."""

    def __init__(self, prompts: Sequence[str] = (), limit: int = 20) -> None:
        self.limit = max(1, int(limit))
        self.prompts: list[str] = []
        for prompt in reversed(list(prompts)):
            self.add(prompt)

    @staticmethod
    def _key(prompt: str) -> str:
        return " ".join(prompt.split()).casefold()

    def add(self, prompt: str) -> None:
        text = " ".join(str(prompt).split())
        if not text:
            return
        key = self._key(text)
        self.prompts = [text] + [p for p in self.prompts if self._key(p) != key]
        del self.prompts[self.limit :]

    def to_list(self) -> list[str]:
        return list(self.prompts)

    @classmethod
    def from_list(cls, stored: object, limit: int = 20) -> RecentPrompts:
        """From stored settings (anything that is not a list of strings counts as empty)."""
        items = [p for p in stored if isinstance(p, str)] if isinstance(stored, list) else []
        return cls(items, limit)

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)
