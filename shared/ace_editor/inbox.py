"""Results sent back from the panel ("send to editor", issue 17 story 7), editor-neutral.

The daemon offers a history result to one editor (`offer`); the plug-in decides which open document it goes into
and where, inserts it as a new layer through its own adapter, and answers `offer_done` so the panel shows what
happened. Krita takes offers while it runs (`on_offer` on the client's reader thread, handed to its UI thread);
GIMP's short-lived plug-in takes the ones waiting at its next run (`take_waiting`). Both use `deliver`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .daemon_history import parse_label
from .jobs import Decode, decode_raw
from .naming import LAYER_PREFIX, short_prompt
from .protocol import client as protocol_client
from .protocol import messages

#: `hello.offers` for a plug-in that inserts offers as they come (Krita) or at its next run (GIMP).
LIVE = "live"
LATER = "later"


@dataclass(frozen=True)
class OpenDocument:
    """One open document as the plug-in reports it: a stable `key` (Krita: the id stored in the document; GIMP:
    the image id), the `name` the user sees, whether it is the `active` one, and its size."""

    key: str
    name: str
    active: bool = False
    width: int = 0
    height: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"key": wire_key(self.key), "name": self.name[:NAME_MAX], "active": self.active}


#: The protocol's limits for a `documents` entry (ace_protocol.messages.Documents).
KEY_MAX = 128
NAME_MAX = 256


def wire_key(key: str) -> str:
    """A key as sent: itself when short enough, else a digest of it (a long file path, say), so it still matches."""
    if len(key) <= KEY_MAX:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:48]


def documents_wire(documents: Sequence[OpenDocument]) -> list[dict[str, Any]]:
    return [d.to_wire() for d in documents]


@dataclass
class Delivery:
    """An offer, decoded: straight RGBA pixels of the result and what the panel user asked for."""

    offer_id: str
    entry: str
    width: int
    height: int
    rgba: bytes
    document: str  # the document the user picked (key or name); "" = the one it came from, else the active one
    label: str  # the job's label: "<editor>: <document> at x,y wxh" (daemon_history.job_label), or a document name
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> str:
        """The document the job was made in, as its label says ("" when it says nothing usable)."""
        place = parse_label(self.label)
        return place.document if place is not None else self.label

    @property
    def home_region(self) -> tuple[int, int, int, int] | None:
        place = parse_label(self.label)
        return place.region if place is not None else None

    @property
    def job_id(self) -> str:
        return str(self.provenance.get("job_id", self.entry.rsplit("-", 1)[0]))

    @property
    def seed(self) -> int | None:
        seed = self.provenance.get("seed")
        return seed if isinstance(seed, int) else None

    def layer_name(self) -> str:
        """`[ACE++] from panel: prompt… (seed 42)`: a name that says where the layer came from."""
        task = str(self.provenance.get("task", "") or "result")
        prompt = short_prompt(str(self.provenance.get("prompt", "")))
        name = f"{LAYER_PREFIX} {task} from panel" + (f": {prompt}" if prompt else "")
        return name + (f" (seed {self.seed})" if self.seed is not None else "")


def delivery(offer: messages.Offer, decode: Decode = decode_raw) -> Delivery:
    width, height, rgba = decode(offer.image)
    return Delivery(
        offer.offer_id,
        offer.entry,
        width,
        height,
        rgba,
        offer.document,
        offer.label,
        dict(offer.provenance or {}),
    )


def _plain(name: str) -> str:
    """A document name compared loosely: no "GIMP: " label prefix, no folder, no case."""
    name = name.strip()
    if name.lower().startswith("gimp: "):
        name = name[6:]
    return name.replace("\\", "/").rsplit("/", 1)[-1].strip().casefold()


def choose_document(item: Delivery, documents: Sequence[OpenDocument]) -> OpenDocument | None:
    """Where the result goes: the document the user picked (by key, then by name), else the one whose name the
    job's label carries (the result goes home), else the active document, else the first; None with none open."""
    if not documents:
        return None
    if item.document:
        for doc in documents:
            if item.document in (doc.key, wire_key(doc.key)):
                return doc
        wanted = _plain(item.document)
        for doc in documents:
            if _plain(doc.name) == wanted:
                return doc
    if item.home:
        home = _plain(item.home)
        for doc in documents:
            if _plain(doc.name) == home:
                return doc
    return next((d for d in documents if d.active), documents[0])


def placement(
    item: Delivery, doc: OpenDocument, known_regions: dict[str, Sequence[int]] | None = None
) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the new layer: where the job's region was (the document's own provenance record of it, else
    the job's label, when the size matches and the document is the job's own), else the top-left corner for a
    result the size of the canvas, else centred on the canvas."""
    at_home = bool(item.home) and _plain(item.home) == _plain(doc.name)
    candidates = [(known_regions or {}).get(item.job_id), item.home_region if at_home else None]
    for region in candidates:
        if region is not None and len(region) == 4 and (int(region[2]), int(region[3])) == (item.width, item.height):
            return int(region[0]), int(region[1]), item.width, item.height
    if (item.width, item.height) == (doc.width, doc.height) or not (doc.width and doc.height):
        return 0, 0, item.width, item.height
    return (doc.width - item.width) // 2, (doc.height - item.height) // 2, item.width, item.height


def regions_from_provenance(records: Sequence[dict[str, Any]]) -> dict[str, Sequence[int]]:
    """job id -> region, from a document's provenance records (Krita's annotation, GIMP's parasites)."""
    found: dict[str, Sequence[int]] = {}
    for record in records:
        region, job_id = record.get("region"), record.get("job_id")
        if isinstance(job_id, str) and isinstance(region, (list, tuple)) and len(region) == 4:
            found.setdefault(job_id, [int(v) for v in region])
    return found


#: Insert one delivery into the editor: returns the name of the document it went into; raises to refuse.
Insert = Callable[[Delivery], str]


def deliver(client: Any, offer: messages.Offer, insert: Insert, decode: Decode = decode_raw) -> tuple[bool, str]:
    """Decode an offer, hand it to the editor's `insert`, and answer the daemon (`offer_done`) either way.
    Returns (ok, message) for the editor's own status line. Never raises."""
    try:
        item = delivery(offer, decode)
        document = insert(item)
        ok, message = True, f"Inserted the result from the panel into {document} as a new layer."
    except Exception as exc:  # whatever went wrong, the panel must hear it rather than wait
        document = ""
        ok, message = False, str(exc) or type(exc).__name__
    try:
        client.offer_done(offer.offer_id, ok, message, document)
    except (protocol_client.ClientError, OSError):
        pass  # the daemon keeps the offer and sends it again after a reconnect
    return ok, message


class NoDocument(Exception):
    """No document is open to take the result."""

    def __init__(self, editor: str = "the editor") -> None:
        super().__init__(f"No document is open in {editor}: open one, then send the result again from the panel.")


def take_waiting(client: Any, insert: Insert, decode: Decode = decode_raw, wait: float = 5.0) -> list[tuple[bool, str]]:
    """A short-lived plug-in's run: insert every offer the daemon kept for it (`welcome.offers`), answering each."""
    if not getattr(client, "takes_offers", False):
        return []
    return [deliver(client, offer, insert, decode) for offer in client.offers(wait=wait)]
