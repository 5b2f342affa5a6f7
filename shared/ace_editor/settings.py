"""Stored plug-in state: settings dataclasses read from JSON, and the per-profile state file.

Settings are read defensively (stored data outlives plug-in versions): unknown keys are dropped, a value of the
wrong type falls back to the default, and `migrate` upgrades what older versions wrote.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def settings_to_json(settings: Any) -> str:
    return json.dumps(asdict(settings), sort_keys=True)


def settings_from_json(cls: type[T], text: str | None, migrate: Callable[[dict[str, Any]], None] | None = None) -> T:
    """A `cls` dataclass from stored JSON: typed fields kept, the rest default. `migrate` rewrites the raw map
    (in place) before it is read, for stored data of an older `version`."""
    default = cls()
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        return default
    if not isinstance(raw, dict):
        return default
    if migrate is not None:
        migrate(raw)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        wanted = type(getattr(default, f.name))
        if f.name in raw and isinstance(raw[f.name], wanted) and not (wanted is int and isinstance(raw[f.name], bool)):
            values[f.name] = raw[f.name]
    return cls(**values)


def new_client_id(editor: str) -> str:
    """A stable id for one editor profile: the daemon's fairness and redelivery key."""
    return f"{editor}-{uuid.uuid4().hex[:16]}"


class ProfileState:
    """Per-profile state in one JSON file: a stable client id, the last session, and jobs whose results are not
    inserted yet (with where they belong), so a later run can still place them."""

    VERSION = 1

    def __init__(self, path: Path, editor: str) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {"version": self.VERSION, "client_id": "", "session": None, "pending": {}}
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = None
        if isinstance(loaded, dict):
            self.data.update({k: loaded[k] for k in ("client_id", "session", "pending") if k in loaded})
            if not isinstance(self.data["pending"], dict):
                self.data["pending"] = {}
        if not self.data["client_id"]:
            self.data["client_id"] = new_client_id(editor)
            self.save()

    @property
    def client_id(self) -> str:
        return str(self.data["client_id"])

    @property
    def session(self) -> str | None:
        return self.data.get("session") or None

    @session.setter
    def session(self, value: str | None) -> None:
        if value != self.data.get("session"):
            self.data["session"] = value
            self.save()

    def pending(self, job_id: str) -> dict[str, Any] | None:
        meta = self.data["pending"].get(job_id)
        return meta if isinstance(meta, dict) else None

    def add_pending(self, job_id: str, meta: dict[str, Any]) -> None:
        self.data["pending"][job_id] = meta
        self.save()

    def remove_pending(self, job_id: str) -> None:
        if self.data["pending"].pop(job_id, None) is not None:
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
