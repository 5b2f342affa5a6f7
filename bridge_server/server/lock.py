"""One daemon per config folder: an OS file lock that dies with the process (no stale-lock cleanup needed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from bridge_server.store.private import open_private, private_dir


class AlreadyRunning(Exception):
    pass


class DaemonLock:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "daemon.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)
        f = os.fdopen(open_private(self.path, os.O_RDWR), "r+", encoding="utf-8")  # noqa: SIM115 - held for life
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise AlreadyRunning(str(self.path)) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
