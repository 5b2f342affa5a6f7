"""Run commands in the Debian trixie environment that the editor tests use (GIMP 3.0, Krita 5.2).

On a bookworm host that is the chroot built by `.ci/steps/20_trixie_chroot.sh`; on a trixie host it is the host
itself. Pure standard library, host side only. The API is small and stable (the GIMP and Krita tests share it):

- `chroot_path() -> Path`: where the chroot lives (env ACE_TRIXIE_CHROOT, default /var/cache/ace-bridge/trixie).
- `host_is_trixie() -> bool`: the host is Debian trixie, so editors run directly on it.
- `trixie_available() -> bool`: `run_in_trixie` can run something (trixie host, or a built chroot and root).
- `inside_path(path) -> str`: the path under which a host path inside the repository is seen by the command.
- `run_in_trixie(argv, *, env=None, timeout=120, binds=(), cwd=None, input=None) -> subprocess.CompletedProcess`.

In the chroot each command runs in its own mount namespace (`unshare -m`), so nothing stays mounted even when the
run is killed: the repository is bind-mounted at /work, /proc is mounted, /tmp and /dev/shm are fresh tmpfs, and
every path in `binds` is bind-mounted at the same path (paths under /tmp land in the fresh tmpfs). The environment
is cleared (`env -i`): only HOME, PATH, LANG and what `env` gives reach the command. Everything runs under
`timeout -k 10 <timeout>`, whose exit code 124 (or 137) means the command ran too long. Output is captured as text
with stderr merged into stdout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the repository appears inside the chroot.
REPO_INSIDE = "/work"
DEFAULT_CHROOT = "/var/cache/ace-bridge/trixie"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
KILL_AFTER_S = 10

# Runs inside `unshare -m` as: sh -c SCRIPT sh CHROOT CWD NBINDS BIND... -- ENV... -- ARGV...
_NAMESPACE_SCRIPT = r"""
set -e
root=$1; cwd=$2; nbinds=$3; shift 3
mount --make-rprivate / 2>/dev/null || true
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/dev/shm" && mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mkdir -p "$root/work" && mount --bind "$REPO" "$root/work"
while [ "$nbinds" -gt 0 ]; do
    mkdir -p "$root$1" && mount --bind "$1" "$root$1"
    shift; nbinds=$((nbinds - 1))
done
exec chroot "$root" /usr/bin/env -i -C "$cwd" "$@"
"""


def chroot_path() -> Path:
    """The trixie chroot folder (it may not exist yet)."""
    return Path(os.environ.get("ACE_TRIXIE_CHROOT") or DEFAULT_CHROOT)


def host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def host_is_trixie() -> bool:
    return host_codename() == "trixie"


def trixie_available() -> bool:
    """Whether `run_in_trixie` can run: a trixie host, or root with a built chroot (its stamp file present)."""
    if host_is_trixie():
        return True
    root = chroot_path()
    return (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and (root / ".ace-bridge-stamp").is_file()
        and shutil.which("unshare") is not None
    )


def inside_path(path: str | os.PathLike[str]) -> str:
    """The path a command run by `run_in_trixie` sees for a host path: the repository is at /work in the chroot,
    everything else (binds) keeps its path; on a trixie host nothing changes."""
    p = Path(path).resolve()
    if host_is_trixie():
        return str(p)
    try:
        return str(Path(REPO_INSIDE) / p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def run_in_trixie(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    binds: Iterable[str | os.PathLike[str]] = (),
    cwd: str | None = None,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the trixie environment with a cleared environment plus `env`.

    `binds` are host folders made visible at the same path; `cwd` is a path as seen by the command (default: the
    repository). Raises RuntimeError when no trixie environment is available."""
    if not trixie_available():
        raise RuntimeError(
            f"no trixie environment: the host is '{host_codename() or 'unknown'}' and {chroot_path()} is not built "
            "(run .ci/steps/20_trixie_chroot.sh as root)"
        )
    trixie_host = host_is_trixie()
    full_env = {"HOME": "/root", "PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    full_env.update(env or {})
    env_args = [f"{k}={v}" for k, v in full_env.items()]
    workdir = cwd or (str(REPO_ROOT) if trixie_host else REPO_INSIDE)
    guard = ["timeout", "-k", str(KILL_AFTER_S), str(max(1, round(timeout)))]
    if trixie_host:
        cmd = [*guard, "env", "-i", "-C", workdir, *env_args, *argv]
        host_env = None
    else:
        bind_list = [str(Path(b).resolve()) for b in binds]
        for b in bind_list:
            if not Path(b).is_dir():
                raise ValueError(f"bind {b} is not an existing folder")
        cmd = [
            *guard, "unshare", "-m", "--propagation", "private", "sh", "-c", _NAMESPACE_SCRIPT, "sh",
            str(chroot_path()), workdir, str(len(bind_list)), *bind_list, *env_args, *argv,
        ]
        host_env = {"PATH": DEFAULT_PATH, "REPO": str(REPO_ROOT)}
    try:
        return subprocess.run(
            cmd,
            env=host_env,
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout + KILL_AFTER_S + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # `timeout` itself hung: report like it would have
        out = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode(errors="replace")
        return subprocess.CompletedProcess(cmd, 124, out, None)
