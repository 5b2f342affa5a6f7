"""Run Python batch code inside the real GIMP 3.0 (gimp-console-3.0, no display), host side.

Installs nothing: the GIMP environment comes from `.ci/steps/20_trixie_chroot.sh` (a trixie chroot on bookworm,
apt on a trixie host), and callers install plug-ins into the throw-away profile themselves. GIMP exits 0 when the
batch code ran and 64 when it raised; the traceback is in the output.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chroot  # noqa: E402

GIMP_CONSOLE = "gimp-console-3.0"
#: Exit code of gimp-console when the batch code raised.
RC_BATCH_RAISED = 64


def gimp_available() -> bool:
    """GIMP 3 can run: on the trixie host directly, or inside a built chroot."""
    if chroot.host_is_trixie():
        return shutil.which(GIMP_CONSOLE) is not None
    return chroot.trixie_available() and (chroot.chroot_path() / "usr/bin" / GIMP_CONSOLE).exists()


def run_gimp_batch(
    code_or_file: str | os.PathLike[str],
    profile_dir: str | os.PathLike[str],
    timeout: float = 120,
    *,
    env: Mapping[str, str] | None = None,
    binds: Iterable[str | os.PathLike[str]] = (),
) -> tuple[int, str]:
    """Run Python code (a string, or a `Path` to a .py file) with python-fu-eval in gimp-console-3.0.

    `profile_dir` (a host folder) becomes GIMP3_DIRECTORY and HOME, so nothing touches a real profile; it is made
    visible in the chroot at the same path, as are `binds`. A code string is written into the profile as
    `batch_main.py` and run from there, so tracebacks name real lines. Returns (exit code, stdout + stderr)."""
    profile = Path(profile_dir).resolve()
    profile.mkdir(parents=True, exist_ok=True)
    if isinstance(code_or_file, (str,)) and not isinstance(code_or_file, Path):
        script = profile / "batch_main.py"
        script.write_text(code_or_file, encoding="utf-8")
    else:
        script = Path(code_or_file).resolve()
    inside = chroot.inside_path(script)
    batch = f"__file__ = {inside!r}; exec(compile(open(__file__).read(), __file__, 'exec'))"
    full_env = {
        "HOME": str(profile),
        "GIMP3_DIRECTORY": str(profile),
        "XDG_CONFIG_HOME": str(profile / "xdg-config"),
        "XDG_CACHE_HOME": str(profile / "xdg-cache"),
        "XDG_DATA_HOME": str(profile / "xdg-data"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    full_env.update(env or {})
    argv = [GIMP_CONSOLE, "-i", "--quit", "--batch-interpreter=python-fu-eval", "-b", batch]
    if chroot.host_is_trixie():
        proc = chroot.run_in_trixie(argv, env=full_env, timeout=timeout, cwd=str(profile))
    else:
        proc = chroot.run_in_trixie(argv, env=full_env, timeout=timeout, binds=[profile, *binds], cwd=str(profile))
    return proc.returncode, proc.stdout or ""
