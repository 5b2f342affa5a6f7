"""Results the disk refused are written as soon as it allows, and at shutdown.

When the history folder is full or read-only, a finished image stays in memory (`StoredResult.rgba`) so its
client still gets it; the journal keeps the events it could not write (`Journal.flush_pending`). Both are retried
every few seconds while the daemon runs and once more when it stops, so a restart after the disk came back finds
every finished result instead of reporting it `interrupted`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from bridge_server.jobs.job import Job
from bridge_server.jobs.journal import Journal
from bridge_server.store.history import History

log = logging.getLogger(__name__)
RETRY_S = 2.0


def save_held_results(history: History, jobs: Iterable[Job]) -> int:
    """Write every result held only in memory to history; returns how many were written now."""
    written = 0
    for job in list(jobs):
        for stored in list(job.results):
            rgba = stored.rgba
            if rgba is None:
                continue
            meta = {
                "provenance": stored.provenance,
                "finished": stored.finished,
                "label": job.label,
                "client_id": job.client_id,
            }
            if not history.save(stored.entry, rgba, meta):
                return written  # still refused: try again later
            stored.rgba = None  # on disk now; replay reads it from there
            written += 1
    if written:
        log.info("wrote %d result(s) kept in memory while the history folder refused them", written)
    return written


def flush(history: History, journal: Journal, jobs: Iterable[Job]) -> None:
    """One retry of everything the disk refused (history first: journal lines name history entries)."""
    save_held_results(history, jobs)
    journal.flush_pending()


def holds_unwritten(journal: Journal, jobs: Iterable[Job]) -> bool:
    return journal.holds_pending() or any(stored.rgba is not None for job in jobs for stored in job.results)


async def keep_writing(history: History, journal: Journal, jobs: dict[str, Job], every_s: float = RETRY_S) -> None:
    """Runs for the daemon's lifetime: retries held results and journal lines while there are any."""
    while True:
        await asyncio.sleep(every_s)
        if holds_unwritten(journal, jobs.values()):
            await asyncio.to_thread(flush, history, journal, list(jobs.values()))
