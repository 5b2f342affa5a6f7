"""Every message of protocol v1 as a dataclass, with the rules for each field.

One frame = one msgpack map with `type`. Requests carry an `id` that replies echo. `from_wire` validates every
field and raises `ProtocolError(bad_request)` naming the field; unknown fields are ignored so that newer clients
and servers can add optional fields without a version bump.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar

from .errors import ErrorCode, ProtocolError, bad_request
from .images import DEFAULT_MAX_PIXELS, ImagePayload

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 4000
MAX_REFERENCES = 4
MAX_DOCUMENTS = 64


def _kind(kind: str, **meta: Any) -> dict[str, Any]:
    return {"kind": kind, **meta}


def spec(kind: str, default: Any = MISSING, *, factory: Any = MISSING, max_len: int | None = None) -> Any:
    """A dataclass field whose wire `kind` drives validation (str, int, float, bool, map, list, image, ...)."""
    meta = _kind(kind, max_len=max_len)
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    if default is not MISSING:
        return field(default=default, metadata=meta)
    return field(metadata=meta)


class Message:
    """Base of all messages. Subclasses are dataclasses with a `TYPE` and `spec` fields."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            kind = f.metadata["kind"]
            if kind in ("image", "image?"):
                wire[f.name] = value.to_wire()
            elif kind == "images":
                wire[f.name] = [img.to_wire() for img in value]
            else:
                wire[f.name] = value
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Message:
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            kind = f.metadata["kind"]
            where = f"{cls.TYPE}.{f.name}"
            if f.name not in wire or wire[f.name] is None:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise bad_request(f"'{cls.TYPE}' needs the field '{f.name}'")
                continue
            values[f.name] = _check(kind, wire[f.name], where, f.metadata.get("max_len"), max_pixels)
        return cls(**values)


def _check(kind: str, value: Any, where: str, max_len: int | None, max_pixels: int) -> Any:
    if kind == "str" or kind == "str?":
        if not isinstance(value, str):
            raise bad_request(f"{where} must be a string")
        limit = max_len or MAX_TEXT_CHARS
        if len(value) > limit:
            raise bad_request(f"{where} is {len(value)} characters long; the limit is {limit}")
        return value
    if kind == "int" or kind == "int?":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{where} must be an integer")
        return value
    if kind == "float" or kind == "float?":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad_request(f"{where} must be a finite number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad_request(f"{where} must be true or false")
        return value
    if kind == "map":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad_request(f"{where} must be a map with string keys")
        return value
    if kind == "list":
        if not isinstance(value, list):
            raise bad_request(f"{where} must be a list")
        return value
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= MAX_ID_CHARS for v in value):
            raise bad_request(f"{where} must be a list of short strings")
        return value
    if kind == "list[int]":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad_request(f"{where} must be a list of integers")
        return value
    if kind in ("image", "image?"):
        return ImagePayload.from_wire(value, what=where, max_pixels=max_pixels)
    if kind == "images":
        if not isinstance(value, list):
            raise bad_request(f"{where} must be a list of images")
        if len(value) > MAX_REFERENCES:
            raise bad_request(f"{where} has {len(value)} images; at most {MAX_REFERENCES} are accepted")
        return [ImagePayload.from_wire(v, what=f"{where}[{i}]", max_pixels=max_pixels) for i, v in enumerate(value)]
    if kind == "any":
        return value
    raise AssertionError(f"unknown field kind {kind}")


# ---------------------------------------------------------------- client -> server


@dataclass
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    client_id: str = spec("str", max_len=MAX_ID_CHARS)
    client_name: str = spec("str", max_len=MAX_ID_CHARS)
    client_version: str = spec("str", max_len=MAX_ID_CHARS)
    protocol_versions: list[int] = spec("list[int]")
    editor: str = spec("str", "", max_len=MAX_ID_CHARS)
    token: str | None = spec("str?", None, max_len=256)
    session: str | None = spec("str?", None, max_len=MAX_ID_CHARS)
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)
    previews: bool = spec("bool", False)  # send small JPEG previews in some `progress` events of this client's jobs
    shm: bool = spec("bool", False)  # offer shared memory for pixels if this client is on the daemon's machine
    #: The secret `welcome.client_secret` gave the first holder of this client_id; needed to resume it.
    client_secret: str | None = spec("str?", None, max_len=MAX_ID_CHARS)
    #: Protocol 2 (ace_protocol.auth): the client's nonce and which token it holds; the token itself is not sent.
    nonce: str | None = spec("str?", None, max_len=64)
    token_id: str | None = spec("str?", None, max_len=64)
    #: Results a panel user sends to this editor (`offer`): "live" (inserted while connected, e.g. Krita), "later"
    #: (a short-lived plug-in that takes them at its next run, e.g. GIMP), "" or anything else: none.
    offers: str = spec("str", "", max_len=16)


@dataclass
class Submit(Message):
    TYPE: ClassVar[str] = "submit"
    id: str = spec("str", max_len=MAX_ID_CHARS)
    task: str = spec("str", max_len=64)
    prompt: str = spec("str", "")
    image: ImagePayload | None = spec("image?", None)
    mask: ImagePayload | None = spec("image?", None)
    references: list[ImagePayload] = spec("images", factory=list)
    params: dict[str, Any] = spec("map", factory=dict)
    label: str = spec("str", "", max_len=256)  # free text for the panel, e.g. document name

    def images(self) -> list[ImagePayload]:
        """Every image the submit carries: image, mask, references."""
        return [p for p in (self.image, self.mask, *self.references) if p is not None]

    def with_images(self, change: Callable[[ImagePayload, str], ImagePayload]) -> Submit:
        """A copy with `change(payload, where)` applied to every image (`where`: e.g. 'submit.references[0]')."""

        def changed(payload: ImagePayload | None, where: str) -> ImagePayload | None:
            return None if payload is None else change(payload, where)

        return replace(
            self,
            image=changed(self.image, "submit.image"),
            mask=changed(self.mask, "submit.mask"),
            references=[change(r, f"submit.references[{i}]") for i, r in enumerate(self.references)],
        )


@dataclass
class Cancel(Message):
    TYPE: ClassVar[str] = "cancel"
    job_id: str = spec("str", max_len=MAX_ID_CHARS)
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)


@dataclass
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    job_ids: list[str] = spec("list[str]")
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)


@dataclass
class Prove(Message):
    """Protocol 2: the client's proof that it holds the token, sent only after the daemon proved it (`challenge`)."""

    TYPE: ClassVar[str] = "prove"
    proof: str = spec("str", max_len=128)


@dataclass
class ShmReady(Message):
    """The client read the probe segment of `welcome.shm`: it echoes the nonce found there, which proves both
    sides see the same memory. From then on the daemon puts big results in segments."""

    TYPE: ClassVar[str] = "shm_ready"
    nonce: str = spec("str", max_len=64)


@dataclass
class Alloc(Message):
    """Ask for a shared-memory segment of `size` bytes to put a submit's pixels in (reply: `allocated`)."""

    TYPE: ClassVar[str] = "alloc"
    id: str = spec("str", max_len=MAX_ID_CHARS)
    size: int = spec("int")


@dataclass
class Release(Message):
    """The client copied these result segments out; the daemon frees them (also freed on `ack` or disconnect)."""

    TYPE: ClassVar[str] = "release"
    segments: list[str] = spec("list[str]")


@dataclass
class Documents(Message):
    """The editor's open documents, for the panel's "send to editor" choice (only to a daemon whose `welcome.offers`
    is set): [{key, name, active}], at most MAX_DOCUMENTS; each new frame replaces the last."""

    TYPE: ClassVar[str] = "documents"
    documents: list[Any] = spec("list")

    def __post_init__(self) -> None:
        if len(self.documents) > MAX_DOCUMENTS:
            raise bad_request(f"documents lists {len(self.documents)} documents; at most {MAX_DOCUMENTS}")
        for i, doc in enumerate(self.documents):
            if (
                not isinstance(doc, dict)
                or not isinstance(doc.get("key", ""), str)
                or not isinstance(doc.get("name", ""), str)
            ):
                raise bad_request(f"documents[{i}] must be a map with string 'key' and 'name'")
            if len(doc.get("key", "")) > MAX_ID_CHARS or len(doc.get("name", "")) > 256:
                raise bad_request(f"documents[{i}]: key is at most {MAX_ID_CHARS} characters, name at most 256")
        # Only these three fields are kept (and shown in the panel): nothing else a client adds is carried along.
        self.documents = [
            {"key": d.get("key", ""), "name": d.get("name", ""), "active": d.get("active") is True}
            for d in self.documents
        ]


@dataclass
class OfferDone(Message):
    """The editor took an `offer`: `ok` with the document it went into, or not, with why (shown in the panel)."""

    TYPE: ClassVar[str] = "offer_done"
    offer_id: str = spec("str", max_len=MAX_ID_CHARS)
    ok: bool = spec("bool")
    message: str = spec("str", "", max_len=500)
    document: str = spec("str", "", max_len=256)


@dataclass
class StatusRequest(Message):
    TYPE: ClassVar[str] = "status"
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)


# ---------------------------------------------------------------- server -> client


@dataclass
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    server_version: str = spec("str")
    protocol_version: int = spec("int")
    session: str = spec("str")
    limits: dict[str, Any] = spec("map")
    engine: dict[str, Any] = spec("map")
    tasks: list[Any] = spec("list")
    resumed: bool = spec("bool", False)
    pending: list[str] = spec("list[str]", factory=list)  # job ids whose results will be (re)delivered now
    id: str | None = spec("str?", None)
    #: Only when the hello asked and the client is on loopback: the probe segment {segment, pid, fd, ino, size}.
    shm: dict[str, Any] | None = spec("map", None)
    #: Only to the first holder of a client_id: send it in every later hello with that id (resume needs it).
    client_secret: str | None = spec("str?", None)
    #: Set by a daemon that sends `offer`s and takes `documents` / `offer_done`: the ids of the offers kept for this
    #: client that follow right after this frame (only when `hello.offers` asked). Absent from older daemons.
    offers: list[str] | None = spec("list[str]", None)


@dataclass
class Accepted(Message):
    TYPE: ClassVar[str] = "accepted"
    id: str = spec("str")
    job_id: str = spec("str")
    position: int = spec("int")
    seed: int = spec("int", 0)


@dataclass
class Allocated(Message):
    TYPE: ClassVar[str] = "allocated"
    id: str = spec("str")
    segment: dict[str, Any] = spec("map")  # {segment, pid, fd, ino, size}


@dataclass
class Queued(Message):
    TYPE: ClassVar[str] = "queued"
    job_id: str = spec("str")
    position: int = spec("int")
    #: Why the job is queued again, for the editor to show (e.g. "restarted on another GPU" after a replica died).
    note: str | None = spec("str?", None)


@dataclass
class Started(Message):
    TYPE: ClassVar[str] = "started"
    job_id: str = spec("str")


@dataclass
class Progress(Message):
    TYPE: ClassVar[str] = "progress"
    job_id: str = spec("str")
    step: int = spec("int")
    total: int = spec("int")
    eta_s: float | None = spec("float?", None)
    image_index: int = spec("int", 0)
    preview: ImagePayload | None = spec("image?", None)


@dataclass
class Result(Message):
    TYPE: ClassVar[str] = "result"
    job_id: str = spec("str")
    index: int = spec("int")
    count: int = spec("int")
    seed: int = spec("int")
    image: ImagePayload = spec("image")
    provenance: dict[str, Any] = spec("map", factory=dict)
    region: list[int] | None = spec("list[int]", None)  # [x, y, w, h] as the client sent it, if any


@dataclass
class Done(Message):
    TYPE: ClassVar[str] = "done"
    job_id: str = spec("str")


@dataclass
class Failed(Message):
    TYPE: ClassVar[str] = "failed"
    code: str = spec("str")
    message: str = spec("str")
    job_id: str | None = spec("str?", None)
    id: str | None = spec("str?", None)

    def error(self) -> ProtocolError:
        try:
            return ProtocolError(self.code, self.message)
        except ValueError:
            return ProtocolError(ErrorCode.INTERNAL, f"{self.code}: {self.message}")


@dataclass
class Cancelled(Message):
    TYPE: ClassVar[str] = "cancelled"
    job_id: str = spec("str")


@dataclass
class StatusReply(Message):
    TYPE: ClassVar[str] = "status_reply"
    engine: dict[str, Any] = spec("map")
    queue: list[Any] = spec("list")
    paused: bool = spec("bool", False)
    id: str | None = spec("str?", None)


@dataclass
class Offer(Message):
    """A history result a panel user sends to this editor, to insert as a new layer; answered by `offer_done`.

    `document`: the open document the user picked (a `documents` key, else a name; "" = the one the result came
    from, else the active one); `label`: the job's own label (the document it was made in); `image`: rgba8."""

    TYPE: ClassVar[str] = "offer"
    offer_id: str = spec("str", max_len=MAX_ID_CHARS)
    entry: str = spec("str", max_len=MAX_ID_CHARS)
    image: ImagePayload = spec("image")
    document: str = spec("str", "", max_len=256)
    label: str = spec("str", "", max_len=256)
    provenance: dict[str, Any] = spec("map", factory=dict)


@dataclass
class Challenge(Message):
    """Protocol 2: the daemon's nonce and its proof that it holds the token the hello named (ace_protocol.auth)."""

    TYPE: ClassVar[str] = "challenge"
    nonce: str = spec("str", max_len=64)
    proof: str = spec("str", max_len=128)


@dataclass
class Error(Message):
    """A request-level error not tied to a job (bad frame, refused hello). The connection may be closed after it."""

    TYPE: ClassVar[str] = "error"
    code: str = spec("str")
    message: str = spec("str")
    id: str | None = spec("str?", None)


# ---------------------------------------------------------------- model status and download (first run)


@dataclass
class ModelStatusRequest(Message):
    """What model the daemon has, what is missing, how a running download goes; answered by `model_state`.
    Editors poll it while a download runs (the daemon pushes nothing unasked)."""

    TYPE: ClassVar[str] = "model_status"
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)


@dataclass
class ModelPull(Message):
    """Start (or resume) downloading the missing model files; `confirm` says the user has read the size and
    licence notice of `model_state`. Only the daemon's own token may ask. Answered by `model_state`."""

    TYPE: ClassVar[str] = "model_pull"
    fft: bool = spec("bool", False)
    confirm: bool = spec("bool", False)
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)


@dataclass
class ModelPullCancel(Message):
    """Stop a running download; the files fetched so far stay, so the next `model_pull` resumes."""

    TYPE: ClassVar[str] = "model_pull_cancel"
    id: str | None = spec("str?", None, max_len=MAX_ID_CHARS)


@dataclass
class ModelState(Message):
    """The daemon's model, for the editors' first-run box.

    `missing`: [{name, bytes, required}] of what is not installed; `download_bytes`: what a pull fetches;
    `licence`: the notice to show before downloading; `can_pull`: this client may start a download; `pull`:
    {state: idle|running|done|failed|cancelled, file, done_bytes, total_bytes, message}; `gpu`: {usable, name,
    total_gib, message}; `tiny`: the demo model is loaded; `tasks`: the tasks the installed files allow;
    `load`: the weights going into memory, {state: unloaded|loading|warming up|loaded|error, stage, step, steps,
    elapsed_s, tier} (editors poll while it loads)."""

    TYPE: ClassVar[str] = "model_state"
    installed: bool = spec("bool")
    tiny: bool = spec("bool", False)
    missing: list[Any] = spec("list", factory=list)
    download_bytes: int = spec("int", 0)
    licence: str = spec("str", "")
    can_pull: bool = spec("bool", False)
    pull: dict[str, Any] = spec("map", factory=dict)
    gpu: dict[str, Any] = spec("map", factory=dict)
    tasks: list[str] = spec("list[str]", factory=list)
    id: str | None = spec("str?", None)
    load: dict[str, Any] = spec("map", factory=dict)


CLIENT_MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m
    for m in (
        Hello,
        Prove,
        Submit,
        Cancel,
        Ack,
        StatusRequest,
        ShmReady,
        Alloc,
        Release,
        ModelStatusRequest,
        ModelPull,
        ModelPullCancel,
        Documents,
        OfferDone,
    )
}
SERVER_MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m
    for m in (
        Welcome,
        Challenge,
        Accepted,
        Allocated,
        Queued,
        Started,
        Progress,
        Result,
        Done,
        Failed,
        Cancelled,
        StatusReply,
        Error,
        ModelState,
        Offer,
    )
}
TERMINAL_EVENTS = ("done", "failed", "cancelled")
