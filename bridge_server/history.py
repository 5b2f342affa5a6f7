"""Results and their provenance on disk: `<history>/<entry>.png` + `<entry>.json`, written before `result` is sent.

Entry names are made by the daemon (`<job hex id>-<index>`) and checked against a pattern and the resolved folder
before any file access, so no name from a client can reach outside the history folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .imaging import decode_png, encode_png, thumbnail_webp

log = logging.getLogger(__name__)
ENTRY_RE = re.compile(r"^[0-9a-f]{32}-\d{1,3}$")
SCHEMA = 1


class HistoryUnavailable(Exception):
    pass


@dataclass
class History:
    root: Path
    warning: str | None = None
    _index: dict[str, dict[str, Any]] = field(default_factory=dict)

    def open(self) -> None:
        """Create the folder and read the index; an unwritable folder becomes a warning, not a crash."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._set_warning(f"history folder {self.root} cannot be created ({exc.strerror}); results are kept in memory only")
            return
        for meta_path in sorted(self.root.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and ENTRY_RE.match(str(meta.get("entry", ""))):
                self._index[meta["entry"]] = meta
        if not os.access(self.root, os.W_OK):
            self._set_warning(f"history folder {self.root} is not writable; results are kept in memory only")

    def _set_warning(self, text: str) -> None:
        if self.warning != text:
            log.warning(text)
        self.warning = text

    def path_for(self, entry: str, suffix: str) -> Path:
        if not ENTRY_RE.match(entry):
            raise KeyError(entry)
        root = self.root.resolve()
        path = (root / f"{entry}{suffix}").resolve()
        if path.parent != root:  # a symlink planted in the folder must not lead out of it
            raise KeyError(entry)
        return path

    def save(self, entry: str, rgba: np.ndarray, meta: dict[str, Any]) -> bool:
        """Write image then metadata (the JSON marks a complete entry). False when the disk refused."""
        meta = {**meta, "entry": entry, "schema": SCHEMA, "width": int(rgba.shape[1]), "height": int(rgba.shape[0])}
        try:
            png = self.path_for(entry, ".png")
            _write_atomic(png, encode_png(rgba))
            _write_atomic(self.path_for(entry, ".json"), json.dumps(meta, indent=1).encode())
        except (OSError, KeyError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            self._set_warning(f"cannot write to the history folder {self.root} ({reason}); results are kept in memory only")
            return False
        self._index[entry] = meta
        if self.warning and "cannot write" in self.warning:
            self.warning = None
        return True

    def load_image(self, entry: str) -> np.ndarray:
        try:
            return decode_png(self.path_for(entry, ".png").read_bytes())
        except (OSError, KeyError) as exc:
            raise HistoryUnavailable(entry) from exc

    def thumbnail(self, entry: str, size: int = 256) -> bytes:
        return thumbnail_webp(self.load_image(entry), size)

    def meta(self, entry: str) -> dict[str, Any] | None:
        return self._index.get(entry)

    def entries(self, *, offset: int = 0, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """Newest first, one page."""
        ordered = sorted(self._index.values(), key=lambda m: (m.get("finished", 0), m["entry"]), reverse=True)
        return len(ordered), ordered[offset : offset + limit]

    def delete(self, entry: str) -> bool:
        if entry not in self._index:
            return False
        for suffix in (".png", ".json"):
            try:
                self.path_for(entry, suffix).unlink(missing_ok=True)
            except (OSError, KeyError):
                return False
        del self._index[entry]
        return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
