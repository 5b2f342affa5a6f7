"""Provenance: what a generated layer came from, as both editors store it with the layer.

One record per layer (a GIMP parasite holds one; a Krita document annotation holds a `ProvenanceStore` of them,
keyed by layer id). The record is the plug-in's request (task, prompt, params, region, source) with the result's
seed, index and job id, and the daemon's own provenance (model, editor, timings...) both whole under `server`
and merged on top where the plug-in said nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocol import VERSION

FORMAT = "ace-bridge-provenance"
RECORD_VERSION = 1
STORE_VERSION = 1


def provenance_record(
    task: str,
    prompt: str,
    seed: int | None,
    params: dict[str, Any],
    region: Sequence[int],
    source: str,
    job_id: str,
    server: dict[str, Any] | None = None,
    index: int = 0,
    count: int = 1,
) -> dict[str, Any]:
    """The record of one generated layer."""
    server = dict(server or {})
    record: dict[str, Any] = {
        "format": FORMAT,
        "version": RECORD_VERSION,
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
        "plugin_version": VERSION,
        "server": server,
    }
    for key, value in server.items():
        record.setdefault(key, value)
    return record


def record_bytes(record: dict[str, Any]) -> bytes:
    """One record as UTF-8 JSON (a GIMP parasite)."""
    return json.dumps(record, sort_keys=True, default=str).encode("utf-8")


def parse_record(data: bytes) -> dict[str, Any]:
    """A record read back; raises ValueError when it is not one."""
    value = json.loads(bytes(data).decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("provenance is not a JSON object")
    return value


@dataclass
class ProvenanceStore:
    """All provenance records of one document, keyed by layer id (JSON, versioned)."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = STORE_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps({"version": self.version, "layers": self.layers}, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | None) -> ProvenanceStore:
        """Read a store; an empty or unreadable one gives an empty store (never raises inside an editor)."""
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
