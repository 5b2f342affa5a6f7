"""Private by default: the daemon's folders are 0700 and its files 0600 whatever the umask, because results,
prompts (journal) and the token belong to one user. Folders are made with `mkdir` then `chmod` (the mode argument
is masked by the umask); files are created with `os.open(..., 0o600)` and chmod-ed in case they already existed.
`tighten` brings an install made by an older version (0755/0644 under umask 022) in line at start."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make `path` itself 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """`os.open` a file that only the user can read: created 0600, and made 0600 if it already existed."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_private_bytes(path: Path, data: bytes | memoryview, *, sync: bool = False) -> None:
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def tighten(roots: Iterable[Path], *, skip: Iterable[Path] = ()) -> int:
    """Make each existing folder in `roots` 0700 and every file and folder below it 0600/0700; symlinks and the
    `skip` folders (model weights) are left alone. Returns how many modes changed (each log line counts them)."""
    skipped = {Path(p) for p in skip}
    changed = 0

    def fix(path: Path, mode: int) -> None:
        nonlocal changed
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077 == 0:
                return
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077 | (mode & 0o700))
            changed += 1
        except OSError:
            pass

    for root in roots:
        root = Path(root)
        if not root.is_dir() or root.is_symlink():
            continue
        fix(root, DIR_MODE)
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if Path(folder, d) not in skipped and not Path(folder, d).is_symlink()]
            for d in dirs:
                fix(Path(folder, d), DIR_MODE)
            for name in files:
                fix(Path(folder, name), FILE_MODE)
    return changed
