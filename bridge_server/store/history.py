"""Results and their provenance on disk: `<history>/<entry>.png` + `<entry>.json`, written before `result` is sent.

Fast path (`deferred_compress`, the default): before `result`, the PNG is written uncompressed (deflate level 0: a
complete, valid PNG built in one buffer, about 8 ms for 2048x2048 instead of ~150 ms) and renamed into place; then the JSON is written
and fsynced. After that a background thread (not the engine thread, at low CPU priority) re-encodes the PNG at
level 1, fsyncs it and atomically replaces the stored file, so a reader always opens one complete PNG or the other.

Durability: the level-0 PNG is not fsynced before `result`. A daemon crash or kill loses nothing (the file is in the
page cache, which belongs to the kernel); only a power loss or kernel crash in the moment before the background pass
has fsynced the level-1 file (about 0.2 s at 2048x2048) can lose the pixels while the fsynced JSON survives. Such an
entry reads as unavailable (`HistoryUnavailable`), never as a corrupt image. `deferred_compress=False` restores the
strict order (level 1 + fsync before `result`).

Entry names are made by the daemon (`<job hex id>-<index>`) and checked against a pattern and the resolved folder
before any file access, so no name from a client can reach outside the history folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge_server.imaging.codecs import decode_png, encode_png, encode_png_stored, thumbnail_webp
from bridge_server.store.private import private_dir, write_private_bytes

log = logging.getLogger(__name__)
ENTRY_RE = re.compile(r"^[0-9a-f]{32}-\d{1,3}$")
SCHEMA = 1
#: The input a result was made from, kept small beside it (`<entry>.before.png`) for the panel's before/after.
BEFORE_SUFFIX = ".before.png"
BEFORE_MAX_SIDE = 512


class HistoryUnavailable(Exception):
    pass


@dataclass
class History:
    root: Path
    warning: str | None = None
    deferred_compress: bool = True
    #: The recompression waits this long, so it does not share the CPUs with delivering the result it compresses.
    recompress_delay_s: float = 1.0
    _index: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pending: dict[str, Future[None]] = field(default_factory=dict, repr=False)
    _hurry: threading.Event = field(default_factory=threading.Event, repr=False)

    def open(self) -> None:
        """Create the folder and read the index; an unwritable folder becomes a warning, not a crash."""
        try:
            private_dir(self.root)
        except OSError as exc:
            self._set_warning(
                f"history folder {self.root} cannot be created ({exc.strerror}); results are kept in memory only"
            )
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

    def save(self, entry: str, rgba: np.ndarray, meta: dict[str, Any], before: np.ndarray | None = None) -> bool:
        """Write image then metadata (the JSON marks a complete entry). False when the disk refused. `before`, the
        input region the result was made from, is kept as a small PNG (at most BEFORE_MAX_SIDE px) beside it."""
        meta = {**meta, "entry": entry, "schema": SCHEMA, "width": int(rgba.shape[1]), "height": int(rgba.shape[0])}
        try:
            png = self.path_for(entry, ".png")
            if self.deferred_compress:
                _write_atomic(png, encode_png_stored(rgba), sync=False)
            else:
                _write_atomic(png, encode_png(rgba))
            if before is not None:
                _write_atomic(
                    self.path_for(entry, BEFORE_SUFFIX),
                    encode_png(_small(before), compress_level=1, parallel=False),
                    sync=False,
                )
                meta["before"] = True
            _write_atomic(self.path_for(entry, ".json"), json.dumps(meta, indent=1).encode())
        except (OSError, KeyError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            self._set_warning(
                f"cannot write to the history folder {self.root} ({reason}); results are kept in memory only"
            )
            return False
        with self._lock:
            self._index[entry] = meta
            if self.deferred_compress:
                self._pending[entry] = _background().submit(self._recompress, entry, rgba, time.monotonic())
        if self.warning and "cannot write" in self.warning:
            self.warning = None
        return True

    def _recompress(self, entry: str, rgba: np.ndarray, saved_at: float = 0.0) -> None:
        """Background thread: replace the level-0 PNG by a level-1 one, atomically, unless the entry was deleted.
        It starts `recompress_delay_s` after the save at the earliest (a backlog adds no further waiting)."""
        tmp: Path | None = None
        remaining = saved_at + self.recompress_delay_s - time.monotonic()
        if remaining > 0:
            self._hurry.wait(remaining)
        try:
            png = self.path_for(entry, ".png")
            tmp = png.with_name(png.name + ".z.part")
            _write_file(tmp, encode_png(rgba, compress_level=1, parallel=False), sync=True)
            with self._lock:
                if entry in self._index:
                    os.replace(tmp, png)
                    tmp = None
        except (OSError, KeyError) as exc:  # the level-0 file stays: complete, only bigger
            log.info("history: could not recompress %s (%s)", entry, exc)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            with self._lock:
                self._pending.pop(entry, None)

    def wait_background(self, timeout: float | None = None) -> None:
        """Block until every pending recompression has finished (tests, benchmarks)."""
        with self._lock:
            pending = list(self._pending.values())
        self._hurry.set()
        try:
            for future in pending:
                future.result(timeout)
        finally:
            self._hurry.clear()

    def load_image(self, entry: str) -> np.ndarray:
        try:
            return decode_png(self.path_for(entry, ".png").read_bytes())
        except (OSError, KeyError) as exc:
            raise HistoryUnavailable(entry) from exc
        except Exception as exc:  # a file cut short by a power loss before it was fsynced
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
        with self._lock:  # a recompression in flight must not bring the file back
            if entry not in self._index:
                return False
            for suffix in (".png", BEFORE_SUFFIX, ".json"):
                try:
                    self.path_for(entry, suffix).unlink(missing_ok=True)
                except (OSError, KeyError):
                    return False
            del self._index[entry]
        return True


def _small(image: np.ndarray) -> np.ndarray:
    """The input as RGBA uint8, shrunk to at most BEFORE_MAX_SIDE px on its longer side."""
    from PIL import Image

    array = np.ascontiguousarray(image, np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 3:
        array = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], axis=2)
    height, width = array.shape[:2]
    scale = BEFORE_MAX_SIDE / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array, "RGBA").resize(size, Image.Resampling.BILINEAR))


_BACKGROUND: ThreadPoolExecutor | None = None
_BACKGROUND_LOCK = threading.Lock()


def _background() -> ThreadPoolExecutor:
    """One low-priority thread for all histories: recompression must not compete with jobs or frames."""
    global _BACKGROUND
    with _BACKGROUND_LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="ace-history", initializer=_lower_priority
            )
        return _BACKGROUND


def _lower_priority() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:  # on Linux a thread id names one thread, so this lowers only the recompression thread
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _write_file(path: Path, data: bytes | np.ndarray, *, sync: bool) -> None:
    # 0600 whatever the umask: results belong to one user. A view of an array is written without a copy.
    write_private_bytes(path, memoryview(data) if isinstance(data, np.ndarray) else data, sync=sync)


def _write_atomic(path: Path, data: bytes | np.ndarray, *, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".part")
    _write_file(tmp, data, sync=sync)
    os.replace(tmp, path)
