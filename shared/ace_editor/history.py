"""The jobs a plug-in sent, newest first: where each came from and what it brought back (to apply it again).

`history_to_bytes` / `history_from_bytes` store finished jobs with their result pixels in a document (Krita: an
annotation in the .kra), so the history comes back with the document after the editor restarts.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
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
    #: What the painter typed (the prompt above is what the daemon got: painter_prompt's ACE++ form).
    instruction: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def typed(self) -> str:
        """The text to put back in the prompt box: as typed, or the sent prompt for jobs that did not keep it."""
        return self.instruction or self.prompt


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

    def merge(self, records: Iterable[JobRecord]) -> int:
        """Add stored records (a reopened document's) whose job is not listed yet, keeping newest first by their
        stored order after the ones already here; returns how many were added."""
        added = [r for r in records if self.find(r.job_id) is None]
        self.records.extend(added)
        del self.records[self.limit :]
        return len(added)

    def of_document(self, doc_key: str) -> list[JobRecord]:
        return [r for r in self.records if r.doc_key == doc_key]

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


# ------------------------------------------------------------------ stored with the document

HISTORY_FORMAT = "ace-bridge-history"
HISTORY_VERSION = 1
#: Result pixels kept per document (raw RGBA before compression): the newest jobs that fit are stored.
MAX_STORED_PIXEL_BYTES = 64 * 1024 * 1024


class HistoryFormatError(ValueError):
    """Stored history that cannot be read: not ours, from a newer version, or damaged."""


#: (job id, result index) -> the result's pixels as stored (zlib, base64): see `history_to_bytes`'s `cache`.
PixelCache = dict[tuple[str, int], str]


def _encoded_pixels(r: ResultImage) -> str:
    return base64.b64encode(zlib.compress(bytes(r.rgba), 1)).decode("ascii")


def _result_to_json(r: ResultImage, job_id: str, cache: PixelCache | None) -> dict[str, Any]:
    key = (job_id, r.index)
    pixels = cache.get(key) if cache is not None else None
    if pixels is None:
        pixels = _encoded_pixels(r)
        if cache is not None:
            cache[key] = pixels
    return {
        "index": r.index,
        "count": r.count,
        "seed": r.seed,
        "width": r.width,
        "height": r.height,
        "provenance": r.provenance,
        "rgba_zlib_b64": pixels,
    }


def _record_to_json(r: JobRecord, cache: PixelCache | None) -> dict[str, Any]:
    return {
        "job_id": r.job_id,
        "doc_key": r.doc_key,
        "task": r.task,
        "prompt": r.prompt,
        "instruction": r.instruction,
        "params": r.params,
        "region": list(r.region),
        "source": r.source,
        "anchor_node": r.anchor_node,
        "state": r.state,
        "message": r.message,
        "layer_ids": list(r.layer_ids),
        "results": [_result_to_json(x, r.job_id, cache) for x in sorted(r.results, key=lambda x: x.index)],
    }


def history_to_bytes(
    records: Iterable[JobRecord], max_pixel_bytes: int = MAX_STORED_PIXEL_BYTES, cache: PixelCache | None = None
) -> bytes:
    """Finished jobs with results, newest first, as UTF-8 JSON (pixels zlib-compressed, base64). Jobs are taken
    in order while their raw pixels fit in `max_pixel_bytes`; older ones are left out (their layers stay).

    The history is written again after every job: a `cache` kept between calls compresses each result once (a
    1024x1024 result takes ~0.1-0.5 s), and keeps only the results of this call."""
    stored: list[dict[str, Any]] = []
    budget = max_pixel_bytes
    for record in records:
        if record.state != "done" or not record.results:
            continue
        size = sum(len(r.rgba) for r in record.results)
        if size > budget:
            break
        budget -= size
        stored.append(_record_to_json(record, cache))
    if cache is not None:
        used = {(r["job_id"], x["index"]) for r in stored for x in r["results"]}
        for key in [k for k in cache if k not in used]:
            del cache[key]
    doc = {"format": HISTORY_FORMAT, "version": HISTORY_VERSION, "records": stored}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _want(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HistoryFormatError(f"{where}: '{key}' is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _result_from_json(obj: Any, where: str) -> ResultImage:
    if not isinstance(obj, dict):
        raise HistoryFormatError(f"{where}: not an object")
    width, height = _want(obj, "width", int, where), _want(obj, "height", int, where)
    try:
        rgba = zlib.decompress(base64.b64decode(_want(obj, "rgba_zlib_b64", str, where), validate=True))
    except (binascii.Error, zlib.error) as exc:
        raise HistoryFormatError(f"{where}: damaged pixels ({exc})") from exc
    if width <= 0 or height <= 0 or len(rgba) != width * height * 4:
        raise HistoryFormatError(f"{where}: {len(rgba)} bytes of pixels for {width}x{height} RGBA")
    provenance = obj.get("provenance")
    return ResultImage(
        _want(obj, "index", int, where),
        _want(obj, "count", int, where),
        _want(obj, "seed", int, where),
        width,
        height,
        rgba,
        dict(provenance) if isinstance(provenance, dict) else {},
    )


def _record_from_json(obj: Any, where: str) -> JobRecord:
    if not isinstance(obj, dict):
        raise HistoryFormatError(f"{where}: not an object")
    region = _want(obj, "region", list, where)
    if len(region) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in region):
        raise HistoryFormatError(f"{where}: 'region' is not four integers")
    anchor = obj.get("anchor_node")
    results = [_result_from_json(x, f"{where}, result {i}") for i, x in enumerate(_want(obj, "results", list, where))]
    return JobRecord(
        _want(obj, "job_id", str, where),
        _want(obj, "doc_key", str, where),
        _want(obj, "task", str, where),
        _want(obj, "prompt", str, where),
        dict(_want(obj, "params", dict, where)),
        (region[0], region[1], region[2], region[3]),
        _want(obj, "source", str, where),
        anchor if isinstance(anchor, str) else None,
        results=results,
        state=_want(obj, "state", str, where),
        message=str(obj.get("message") or ""),
        layer_ids=[x for x in obj.get("layer_ids") or [] if isinstance(x, str)],
        instruction=str(obj.get("instruction") or ""),
    )


def history_from_bytes(data: bytes | bytearray | memoryview | None) -> list[JobRecord]:
    """The records `history_to_bytes` stored, newest first; empty data is an empty history.
    Raises HistoryFormatError for anything else than this format at a version this code reads."""
    if not data:
        return []
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HistoryFormatError(f"stored history is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
        raise HistoryFormatError(f"stored history is not in the {HISTORY_FORMAT} format")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > HISTORY_VERSION:
        raise HistoryFormatError(
            f"stored history has version {version!r}; this plug-in reads up to {HISTORY_VERSION} (update it)"
        )
    records = doc.get("records")
    if not isinstance(records, list):
        raise HistoryFormatError("stored history has no list of records")
    return [_record_from_json(r, f"history entry {i}") for i, r in enumerate(records)]
