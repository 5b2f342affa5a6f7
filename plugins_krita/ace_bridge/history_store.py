"""The docker's history kept in the document: an annotation in the .kra, so it comes back after Krita restarts.

The bytes are ace_editor.history's editor-neutral form (finished jobs with their result pixels, newest first,
within a pixel budget). Krita saves document annotations into the .kra and loads them back with it
(Document.setAnnotation / annotation); writing one marks the document modified, so Save keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .bundled import history
from .model import JobRecord

#: Document annotation holding the docker's history of this document (JSON, see ace_editor.history).
HISTORY_ANNOTATION = "ace-bridge/history"
HistoryFormatError = history.HistoryFormatError


#: Compressed result pixels per document key, so writing the history after a job compresses only its results.
_pixel_caches: dict[str, dict] = {}


def save(doc, records: Iterable[JobRecord], doc_key: str = "") -> None:
    """Store the document's finished jobs in it (the newest whose pixels fit, see history_to_bytes)."""
    cache = _pixel_caches.setdefault(doc_key, {}) if doc_key else None
    data = history.history_to_bytes(records, cache=cache)
    doc.setAnnotation(HISTORY_ANNOTATION, "ACE Bridge history (JSON)", data)


def load(doc) -> list[JobRecord]:
    """The jobs stored in the document, newest first ([] when it has none). Raises HistoryFormatError when the
    annotation is not readable (damaged, or written by a newer plug-in)."""
    return history.history_from_bytes(bytes(doc.annotation(HISTORY_ANNOTATION) or b""))
