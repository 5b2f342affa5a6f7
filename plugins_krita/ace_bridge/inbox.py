"""Results sent from the panel ("send to editor", issue 17 story 7), inserted into Krita.

The worker's client asks the daemon for offers (`hello.offers = "live"`) and hands each one to `KritaInbox` from
its reader thread; a Qt signal brings it to the UI thread, where ace_editor's inbox decides the document (the one
the panel user picked, else the one the result came from, else the active one) and the place, and this module adds
one paint layer on top of that document's stack (one addChildNode: one change of the stack, one undo step) with
its provenance record. The open documents are reported to the daemon so the panel can offer them as choices.
"""

from __future__ import annotations

import os
from typing import Any

from . import document as kdoc
from . import layers
from .bundled import VENDOR_DIR, geometry, provenance
from .model import PROVENANCE_ANNOTATION, ProvenanceStore, ResultImage
from .qt_compat import QObject, QTimer, Signal
from .worker import decode_result

if os.path.isdir(VENDOR_DIR):
    from ._vendor.ace_editor import inbox as core
else:  # a source checkout (tests): the shared packages are on sys.path
    from ace_editor import inbox as core  # type: ignore[no-redef]

#: How often the open documents are compared with what the daemon was last told (cheap: names and keys only).
DOCUMENTS_POLL_MS = 2000


def _doc_name(doc) -> str:
    return doc.name() or os.path.basename(doc.fileName() or "") or "Untitled"


def open_documents() -> list[tuple[core.OpenDocument, Any]]:
    """(what the daemon is told, the Krita document) for every open document; the key is the id the plugin keeps
    in a document (never added here: reporting must not modify a document), else its file or name."""
    app = kdoc.krita_app()
    active = app.activeDocument()
    found = []
    for doc in app.documents():
        key = kdoc.document_key(doc, create=False) or doc.fileName() or _doc_name(doc)
        is_active = active is not None and doc == active
        found.append((core.OpenDocument(key, _doc_name(doc), is_active, doc.width(), doc.height()), doc))
    return found


def insert(item: core.Delivery) -> str:
    """Add the result as a new paint layer on top of its document; returns the document's name."""
    docs = open_documents()
    chosen = core.choose_document(item, [d for d, _ in docs])
    if chosen is None:
        raise core.NoDocument("Krita")
    doc = next(d for info, d in docs if info is chosen)
    store = ProvenanceStore.from_bytes(doc.annotation(PROVENANCE_ANNOTATION))
    region = geometry.Bounds(*core.placement(item, chosen, core.regions_from_provenance(list(store.layers.values()))))
    result = ResultImage(0, 1, item.seed or 0, item.width, item.height, item.rgba, dict(item.provenance))
    layer = layers.new_result_layer(doc, item.layer_name(), result, region)
    root = doc.rootNode()
    siblings = root.childNodes()
    root.addChildNode(layer, siblings[-1] if siblings else None)
    params = item.provenance.get("params")
    record = provenance.provenance_record(
        str(item.provenance.get("task", "")),
        str(item.provenance.get("prompt", "")),
        item.seed,
        params if isinstance(params, dict) else {},
        tuple(region),
        "panel",
        item.job_id,
        item.provenance,
    )
    store.add(kdoc.node_id(layer), record)
    doc.setAnnotation(PROVENANCE_ANNOTATION, "ACE Bridge provenance (JSON)", store.to_bytes())
    doc.refreshProjection()
    return chosen.name


class KritaInbox(QObject):
    """Takes offers for one worker: its client's `on_offer` (reader thread) -> `arrived` -> insert (UI thread)."""

    arrived = Signal(object, object)  # the client it came through, an ace_protocol `Offer`
    status = Signal(str)  # what happened, for the docker's status line
    inserted = Signal(bool, str)  # ok, message (tests wait on it)

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker = worker
        self.last_sent: list[dict] | None = None
        self.arrived.connect(self._take)
        worker.offers_mode = core.LIVE
        worker.on_offer = self.arrived.emit  # the worker hands it to every client it makes (reader thread)
        worker.welcome_received.connect(self._on_welcome)
        self.timer = QTimer(self)
        self.timer.setInterval(DOCUMENTS_POLL_MS)
        self.timer.timeout.connect(self.report_documents)
        self.timer.start()

    def _on_welcome(self, _welcome: Any) -> None:
        self.last_sent = None  # a new connection: tell it again
        self.report_documents()

    def report_documents(self) -> None:
        client = self.worker.client
        if client is None or not getattr(client, "takes_offers", False):
            return
        try:
            wire = core.documents_wire([d for d, _ in open_documents()])
            if wire != self.last_sent:
                client.set_documents(wire)
                self.last_sent = wire
        except Exception:  # the panel's list is a convenience; never disturb the docker for it
            pass

    def _take(self, client: Any, offer: Any) -> None:
        ok, message = core.deliver(client, offer, insert, decode_result)
        self.status.emit(message if ok else f"Could not insert the result from the panel: {message}")
        self.inserted.emit(ok, message)
