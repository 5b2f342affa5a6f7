"""Plugin logic that knows neither Krita nor Qt: settings, layer names, provenance records, job bookkeeping.

Everything here is plain data so it can be unit-tested outside Krita (tests/unit/test_krita_model.py).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

PLUGIN_VERSION = "0.1.0"
#: Document annotation holding the provenance of every generated layer, keyed by the layer's uniqueId.
PROVENANCE_ANNOTATION = "ace-bridge/provenance"
#: Document annotation with a UUID that identifies a document across switches and reloads.
DOCUMENT_ID_ANNOTATION = "ace-bridge/document-id"
PROVENANCE_VERSION = 1
#: The colour space results are exchanged in (protocol: 8-bit sRGB, straight alpha).
EXCHANGE_SPACE = ("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")
SEED_MAX = 2**32 - 1
NAME_PROMPT_CHARS = 40


class Source(str, Enum):
    """What the plugin reads: the visible image (result goes on top) or the active layer (result goes above it)."""

    IMAGE = "image"
    LAYER = "layer"


@dataclass
class Settings:
    """What the docker persists between sessions. Stored as JSON; unknown keys are dropped, bad values reset."""

    version: int = 1
    client_id: str = ""  # stable per Krita profile: the daemon's fairness and redelivery key
    url: str = ""
    token: str = ""
    task: str = "local_edit"
    source: str = Source.IMAGE.value
    seed_mode: str = "random"  # random | fixed
    seed: int = 0
    steps: int = 28
    count: int = 1
    padding: int = -1  # -1: automatic (grows with the selection)
    feather: int = 8

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Settings:
        default = cls()
        try:
            raw = json.loads(text) if text else {}
        except ValueError:
            return default
        if not isinstance(raw, dict):
            return default
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in raw and isinstance(raw[f.name], type(getattr(default, f.name))):
                values[f.name] = raw[f.name]
        settings = cls(**values)
        if settings.source not in (s.value for s in Source):
            settings.source = Source.IMAGE.value
        if settings.seed_mode not in ("random", "fixed"):
            settings.seed_mode = "random"
        return settings


def pick_seed(mode: str, fixed: int, rng: random.Random | None = None) -> int:
    """The seed to send: the fixed one, or a fresh random one (sent explicitly so the layer name can show it)."""
    if mode == "fixed":
        return max(0, min(int(fixed), SEED_MAX))
    return (rng or random.Random()).randint(0, SEED_MAX)


_IMAGE_REF = re.compile(r"(\b(in|of|on|to)\s+)?\{image\}(\s+mask)?\.?", re.IGNORECASE)


def layer_name(task: str, prompt: str, seed: int, index: int = 0, count: int = 1) -> str:
    """`[ACE local_edit] prompt… (seed 42)`, with `#2/3` for the images of a multi-image job."""
    text = " ".join(_IMAGE_REF.sub(" ", prompt).split()).strip(" .")
    if len(text) > NAME_PROMPT_CHARS:
        text = text[: NAME_PROMPT_CHARS - 1].rstrip() + "…"
    suffix = f" #{index + 1}/{count}" if count > 1 else ""
    return f"[ACE {task}] {text} (seed {seed}){suffix}"


def group_name(task: str, prompt: str, seed: int, count: int) -> str:
    return layer_name(task, prompt, seed) + f" ×{count}"


def task_params(task: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Keep only the parameters the task (a `welcome` task-table entry) declares, clamped to their ranges."""
    out: dict[str, Any] = {}
    for spec in task.get("params", []):
        name = spec.get("name")
        if name not in values or values[name] is None:
            continue
        value = values[name]
        if spec.get("kind") in ("int", "float") and not isinstance(value, bool):
            lo, hi = spec.get("minimum"), spec.get("maximum")
            if lo is not None:
                value = max(lo, value)
            if hi is not None:
                value = min(hi, value)
            value = int(value) if spec["kind"] == "int" else float(value)
        out[name] = value
    return out


def apply_template(template: str, instruction: str) -> str:
    """Fill the task's prompt template: the user's text replaces the example, `{image}` stays where it was.

    A user text that already contains `{image}` is sent as-is."""
    instruction = instruction.strip()
    if "{image}" in instruction or "{image}" not in template:
        return instruction
    head, _, tail = template.partition("{image}")
    if not head.strip():
        return "{image} " + instruction
    return instruction + " {image}" if not tail.strip() else instruction.rstrip(".") + " in {image}."


def mask_is_full(mask: bytes) -> bool:
    """A selection that is fully opaque everywhere counts as "no selection" (Krita's select-all)."""
    return bool(mask) and mask.count(255) == len(mask)


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def progress_text(kind: str, position: int | None = None, step: int = 0, total: int = 0,
                  eta_s: float | None = None) -> str:
    """The status line the docker shows for a job event."""
    if kind == "queued":
        return "Waiting: next in line" if not position else f"Queued: position {position}"
    if kind == "started":
        return "Started"
    if kind == "progress":
        eta = format_eta(eta_s)
        return f"Step {step}/{total}" + (f", about {eta} left" if eta else "")
    return kind.capitalize()


@dataclass
class ProvenanceStore:
    """All provenance records of one document, as stored in its annotation (JSON, versioned)."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = PROVENANCE_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps({"version": self.version, "layers": self.layers}, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | None) -> ProvenanceStore:
        """Read an annotation; an empty or unreadable one gives an empty store (never raises inside Krita)."""
        if not data:
            return cls()
        try:
            raw = json.loads(bytes(data).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        layers = raw.get("layers")
        if raw.get("version", 0) < 1 and isinstance(raw.get("records"), list):  # pre-release layout: a list
            layers = {r["layer_id"]: r for r in raw["records"] if isinstance(r, dict) and "layer_id" in r}
        if not isinstance(layers, dict):
            return cls()
        return cls(layers={str(k): v for k, v in layers.items() if isinstance(v, dict)})

    def add(self, layer_id: str, record: dict[str, Any]) -> None:
        self.layers[layer_id] = dict(record)

    def get(self, layer_id: str) -> dict[str, Any] | None:
        return self.layers.get(layer_id)


def provenance_record(task: str, prompt: str, seed: int, params: dict[str, Any], region: tuple[int, int, int, int],
                      source: str, job_id: str, server: dict[str, Any] | None = None,
                      index: int = 0, count: int = 1) -> dict[str, Any]:
    """What goes into the document for one generated layer; the daemon's own provenance (model etc.) is kept whole."""
    server = dict(server or {})
    return {
        "task": task,
        "prompt": prompt,
        "seed": seed,
        "model": server.get("model", ""),
        "params": dict(params),
        "region": list(region),
        "source": source,
        "job_id": job_id,
        "index": index,
        "count": count,
        "server": server,
        "plugin_version": PLUGIN_VERSION,
    }


@dataclass
class ResultImage:
    """One image of a finished job, ready to insert: straight-alpha RGBA of the region's size."""

    index: int
    count: int
    seed: int
    width: int
    height: int
    rgba: bytes
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRecord:
    """A job as the docker tracks it: where it came from and what it brought back (for history and re-apply)."""

    job_id: str
    doc_key: str
    task: str
    prompt: str
    params: dict[str, Any]
    region: tuple[int, int, int, int]
    source: str
    anchor_node: str | None
    results: list[ResultImage] = field(default_factory=list)
    state: str = "submitted"  # submitted | queued | running | done | failed | cancelled
    message: str = ""
    layer_ids: list[str] = field(default_factory=list)
