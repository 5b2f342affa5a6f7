"""Append-only job journal (JSON lines), so a restart knows every job it accepted and what became of it.

Written before `accepted` and at every state change. Each event is written to the file at once (a killed daemon
keeps it); the fsync that makes it survive a power cut runs off the event loop and is shared by every event
written meanwhile (group commit): one fsync per event on the loop took ~3.5 ms each (measured), twice per submit and
cancel, and under a flood of both that stalled every editor's `accepted`. `accepted` is only sent once `durable()`
says the submit's event is on disk. Replayed at start: jobs with no end are `interrupted` (unless
engine replicas still run them, `serve --ray`: then `reattached`); finished jobs whose results were never
acknowledged are delivered again on resume. Compacted at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, TextIO

from bridge_server.store.private import open_private, private_dir

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.warning: str | None = None
        self._file: TextIO | None = None
        self._pending = b""  # events the disk refused, oldest first
        self._pending_lock = threading.Lock()  # the retry runs on a worker thread
        self._written = 0  # events handed to the file so far
        self._synced = 0  # of those, how many an fsync has covered
        self._sync_task: asyncio.Task[None] | None = None

    def replay(self) -> dict[str, dict[str, Any]]:
        """job_id -> record {job: {...}, state, results: [{index, seed, entry}], error, acked}."""
        records: dict[str, dict[str, Any]] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return records
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line after a kill
            if not isinstance(event, dict):
                continue
            _apply(records, event)
        return records

    def open(self, keep: dict[str, dict[str, Any]]) -> None:
        """Rewrite the journal with only the records worth keeping, then append from there."""
        try:
            private_dir(self.path.parent)
            tmp = self.path.with_name(self.path.name + ".tmp")
            # 0600 whatever the umask: the journal holds every prompt in clear.
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
                for record in keep.values():
                    for event in _events_of(record):
                        f.write(json.dumps(event) + "\n")
            os.replace(tmp, self.path)
            self._file = os.fdopen(
                open_private(self.path, os.O_WRONLY | os.O_APPEND),
                "a",  # noqa: SIM115
                encoding="utf-8",
            )  # lives as long as the daemon
        except OSError as exc:
            self.warning = f"job journal {self.path} is not writable ({exc.strerror}); a restart would lose queue state"
            log.warning(self.warning)
            self._file = None

    def write(self, event: dict[str, Any]) -> None:
        """Append one event. When the disk refuses (full), the bytes not yet written wait in memory, in order, and
        go out with the next write, `flush_pending` (the queue retries every few seconds) or `close`: exactly the
        missing bytes, written straight to the descriptor, so no line is torn or doubled."""
        if self._file is None:
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # a worker thread (or no loop): fsync right here, as before
        with self._pending_lock:
            self._pending += (json.dumps(event) + "\n").encode()
            self._written += 1
            self._flush_locked(sync=loop is None)
        if loop is not None:
            self._start_sync(loop)

    async def durable(self) -> None:
        """Wait until every event written so far is on disk (or the disk refused: then it waits in memory, as the
        journal's warning says). Callers waiting together share one fsync."""
        target = self._written
        loop = asyncio.get_running_loop()
        if self._synced < target and self._file is not None:
            # One round: the sync task goes on until it covered every event written, or the disk refused.
            await asyncio.shield(self._start_sync(loop))

    def _start_sync(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = loop.create_task(self._sync_once(), name="ace-journal-fsync")
        return self._sync_task

    async def _sync_once(self) -> None:
        while self._synced < self._written and self._file is not None:
            target = self._written
            if not await asyncio.to_thread(self._fsync):
                return
            self._synced = max(self._synced, target)

    def _fsync(self) -> bool:
        """Worker thread: the fsync runs outside the lock, so the event loop's next `write` never waits for it."""
        with self._pending_lock:
            if not self._flush_locked(sync=False) or self._file is None:
                return False
            fd = self._file.fileno()
        try:
            os.fsync(fd)
        except OSError as exc:
            log.warning("job journal %s cannot be synced (%s)", self.path, exc.strerror)
            return False
        return True

    def holds_pending(self) -> bool:
        return bool(self._pending)

    def flush_pending(self) -> bool:
        """Write what the disk refused before; True when nothing is left waiting."""
        with self._pending_lock:
            return self._flush_locked(sync=bool(self._pending))

    def _flush_locked(self, sync: bool = True) -> bool:
        if self._file is None:
            return not self._pending
        if not self._pending and not sync:
            return True
        fd = self._file.fileno()
        try:
            while self._pending:
                written = os.write(fd, self._pending)
                self._pending = self._pending[written:]
            if sync:
                os.fsync(fd)
        except OSError as exc:
            text = (
                f"job journal {self.path} cannot be written ({exc.strerror}); {len(self._pending)} bytes wait in memory"
            )
            if self.warning is None or "cannot be written" not in self.warning:
                log.warning(text)
            self.warning = text
            return False
        if self.warning and "cannot be written" in self.warning:
            log.info("job journal %s is written again", self.path)
            self.warning = None
        return True

    def close(self) -> None:
        with self._pending_lock:
            self._flush_locked(sync=True)  # at shutdown, whatever the disk now allows, on disk
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self._file is not None:
            self._file.close()
            self._file = None


def _apply(records: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
    kind, job_id = event.get("ev"), event.get("job_id")
    if not isinstance(job_id, str):
        return
    if kind == "accepted" and isinstance(event.get("job"), dict):
        records[job_id] = {"job": event["job"], "state": "queued", "results": [], "error": None, "acked": False}
        return
    record = records.get(job_id)
    if record is None:
        return
    if kind == "started":
        record["state"] = "running"
    elif kind == "result":
        record["results"].append({k: event.get(k) for k in ("index", "seed", "entry", "finished")})
    elif kind in ("done", "cancelled"):
        record["state"] = kind
    elif kind == "failed":
        record["state"] = "failed"
        record["error"] = {"code": event.get("code"), "message": event.get("message")}
    elif kind == "acked":
        record["acked"] = True
    elif kind == "restarted":  # its engine replica died under it (serve --ray); kept through compaction
        record.setdefault("restarts", []).append({k: event.get(k) for k in ("index", "replica", "reason", "restarts")})
    elif kind == "reattached":  # a restarted daemon took it back from the replicas (serve --ray)
        record["state"] = "running"
        record.setdefault("reattached", []).append({k: event.get(k) for k in ("index", "found")})


def _events_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    job_id = record["job"]["id"]
    events: list[dict[str, Any]] = [{"ev": "accepted", "job_id": job_id, "job": record["job"]}]
    if record["state"] == "running":
        events.append({"ev": "started", "job_id": job_id})
    for restart in record.get("restarts", []):
        events.append({"ev": "restarted", "job_id": job_id, **restart})
    for reattach in record.get("reattached", []):
        events.append({"ev": "reattached", "job_id": job_id, **reattach})
    for result in record["results"]:
        events.append({"ev": "result", "job_id": job_id, **result})
    if record["state"] in ("done", "cancelled"):
        events.append({"ev": record["state"], "job_id": job_id})
    elif record["state"] == "failed":
        events.append({"ev": "failed", "job_id": job_id, **(record["error"] or {})})
    if record.get("acked"):
        events.append({"ev": "acked", "job_id": job_id})
    return events
