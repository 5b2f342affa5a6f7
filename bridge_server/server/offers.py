"""Results a panel user sends back to an editor ("send to editor", issue 17 story 7): who can take them and the
offers waiting for each editor.

An editor says in `hello.offers` how it takes them: "live" (a persistent plug-in such as Krita's docker inserts
each `offer` as it arrives) or "later" (a short-lived plug-in such as GIMP's takes what waits at its next run). An
offer stays here until the editor answers `offer_done`, so one sent just before a reconnect is sent again after
it. Offers live in the daemon's memory only: a daemon restart forgets them (the result itself stays in history).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ace_protocol.images import ImagePayload
from ace_protocol.messages import Offer

#: What `hello.offers` may say; anything else means the editor takes no offers (an older plug-in).
OFFER_MODES = ("live", "later")
KEPT_PER_CLIENT = 20
RECENT_KEPT = 50


class OfferRefused(Exception):
    """Why a result cannot be sent to that editor now; `str()` is the panel's message, `status` the HTTP status."""

    def __init__(self, message: str, status: int = 409, code: str = "not_connected") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class OfferRecord:
    offer_id: str
    client_id: str
    entry: str
    editor: str
    document: str  # what the panel user picked ("" = where the result came from, else the active document)
    created: float
    state: str = "sent"  # sent | kept | inserted | failed
    message: str = ""
    inserted_into: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id,
            "client_id": self.client_id,
            "entry": self.entry,
            "editor": self.editor,
            "document": self.document,
            "state": self.state,
            "message": self.message,
            "inserted_into": self.inserted_into,
            "created": self.created,
        }


@dataclass
class OfferBox:
    waiting: dict[str, list[OfferRecord]] = field(default_factory=dict)  # client_id -> not yet answered, oldest first
    recent: deque[OfferRecord] = field(default_factory=lambda: deque(maxlen=RECENT_KEPT))  # for the panel, newest last

    def add(self, client_id: str, entry: str, editor: str, document: str, *, connected: bool) -> OfferRecord:
        record = OfferRecord(
            offer_id=secrets.token_hex(8),
            client_id=client_id,
            entry=entry,
            editor=editor,
            document=document,
            created=time.time(),
            state="sent" if connected else "kept",
        )
        queue = self.waiting.setdefault(client_id, [])
        queue.append(record)
        del queue[:-KEPT_PER_CLIENT]  # an editor that never comes back does not pile them up
        self.recent.append(record)
        return record

    def for_client(self, client_id: str) -> list[OfferRecord]:
        return list(self.waiting.get(client_id, ()))

    def done(self, client_id: str, offer_id: str, ok: bool, message: str, document: str) -> OfferRecord | None:
        """The editor's answer; only the editor the offer went to can answer it (None for anyone else)."""
        queue = self.waiting.get(client_id, [])
        record = next((r for r in queue if r.offer_id == offer_id), None)
        if record is None:
            return None
        queue.remove(record)
        record.state = "inserted" if ok else "failed"
        record.message = message
        record.inserted_into = document
        return record

    def views(self) -> list[dict[str, Any]]:
        return [r.view() for r in reversed(self.recent)]


def target_view(session: Any) -> dict[str, Any]:
    """An editor as the panel offers it as a target: who, whether connected, how it takes offers, its documents."""
    mode = session.offers if session.offers in OFFER_MODES else ""
    return {
        "client_id": session.client_id,
        "editor": session.editor,
        "client_name": session.client_name,
        "connected": session.connection is not None,
        "mode": mode,
        "documents": list(session.documents) if session.connection is not None else [],
    }


def editor_title(session: Any) -> str:
    """ "Krita", "GIMP": the editor's name without its version ("krita 5.2.9")."""
    words = (session.editor or session.client_name or "the editor").split()
    name = words[0] if words else "the editor"
    return "GIMP" if name.lower() == "gimp" else name[:1].upper() + name[1:]


def check_target(session: Any) -> None:
    """Raise OfferRefused when this editor cannot take a result now, with what the user can do about it."""
    title = editor_title(session)
    if session.offers not in OFFER_MODES:
        raise OfferRefused(
            f"{title} ({session.client_name or session.client_id}) cannot receive results: its plug-in is older "
            f"than this daemon. Update it with `ace-bridge install {session.editor or 'krita'}`.",
            code="not_supported",
        )
    if session.offers == "live" and session.connection is None:
        raise OfferRefused(
            f"{title} is not connected: open it with the ACE Bridge docker (it connects by itself), then send "
            "the result again."
        )


def offer_message(history: Any, record: OfferRecord) -> Offer:
    """The `offer` frame for a record: the stored result as rgba8 with its provenance. Reads the disk: call it on
    a worker thread. Raises HistoryUnavailable when the entry is gone."""
    rgba = history.load_image(record.entry)  # always RGBA (the history's PNG decoder converts)
    meta = history.meta(record.entry) or {}
    height, width = int(rgba.shape[0]), int(rgba.shape[1])
    return Offer(
        offer_id=record.offer_id,
        entry=record.entry,
        image=ImagePayload(format="rgba8", width=width, height=height, data=rgba.tobytes()),
        document=record.document,
        label=str(meta.get("label", ""))[:256],
        provenance=dict(meta.get("provenance") or {}),
    )
