"""Run commands in one of the Debian environments that the editor tests use, by name.

Environments (`ENVIRONMENTS`): `bookworm` (Krita 5.1 when the host is not bookworm), `trixie` (GIMP 3.0,
Krita 5.2), `sid` (GIMP 3.2, Krita 5.3) and `sid-experimental` (Krita 6.0). Each is a chroot built by a CI step
(.ci/steps/2*_chroot.sh, recipe stamped in `<chroot>/.ace-bridge-stamp`) at `ACE_<NAME>_CHROOT` (e.g.
ACE_SID_EXPERIMENTAL_CHROOT), default /var/cache/ace-bridge/<name> -- unless the host itself is that release
(`bookworm` and `trixie` only), then commands run directly on the host. Pure standard library, host side only:

- `chroot_path(name) -> Path`: where the chroot lives (it may not exist yet).
- `host_codename() -> str`, `host_is(name) -> bool`: the host's VERSION_CODENAME, and whether it is `name`.
- `available(name) -> bool`: `run_in(name, ...)` can run something (host of that release, or root with the
  chroot built and `unshare`).
- `root(name) -> Path`: where the environment's files are seen from the host (`/` on a host of that release).
- `inside_path(path, name) -> str`: the path under which a host path is seen by a command in that environment.
- `run_in(name, argv, *, env=None, timeout=120, binds=(), cwd=None, input=None) -> subprocess.CompletedProcess`.
- The trixie-only names of the first version stay: `host_is_trixie()`, `trixie_available()`, `run_in_trixie()`,
  and `chroot_path()` / `inside_path(path)` default to trixie.

In a chroot each command runs in its own mount namespace (`unshare -m`), so nothing stays mounted even when the
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
#: Where the repository appears inside a chroot.
REPO_INSIDE = "/work"
CHROOT_BASE = "/var/cache/ace-bridge"
DEFAULT_CHROOT = f"{CHROOT_BASE}/trixie"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
KILL_AFTER_S = 10
#: The environments the CI steps build, oldest first.
ENVIRONMENTS = ("bookworm", "trixie", "sid", "sid-experimental")
#: Releases whose host runs the editors itself instead of a chroot of the same release.
_HOST_RELEASES = ("bookworm", "trixie")
STAMP = ".ace-bridge-stamp"

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


def _check(name: str) -> str:
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(ENVIRONMENTS)}")
    return name


def chroot_path(name: str = "trixie") -> Path:
    """The chroot folder of environment `name` (it may not exist yet)."""
    var = "ACE_" + _check(name).upper().replace("-", "_") + "_CHROOT"
    return Path(os.environ.get(var) or f"{CHROOT_BASE}/{name}")


def host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def host_is(name: str) -> bool:
    """The host is that Debian release, so its editors run directly on it (bookworm and trixie only: sid moves,
    and experimental is never a whole system)."""
    return _check(name) in _HOST_RELEASES and host_codename() == name


def host_is_trixie() -> bool:
    return host_is("trixie")


def root(name: str = "trixie") -> Path:
    """The environment's file system as seen from the host."""
    return Path("/") if host_is(name) else chroot_path(name)


def available(name: str = "trixie") -> bool:
    """Whether `run_in(name, ...)` can run: a host of that release, or root with a built chroot (stamp present)."""
    if host_is(name):
        return True
    folder = chroot_path(name)
    return (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and ((folder / STAMP).is_file() or (folder / ".ace-bridge-ready").is_file())  # the latter: 15_krita_host.sh v1
        and shutil.which("unshare") is not None
    )


def trixie_available() -> bool:
    return available("trixie")


def inside_path(path: str | os.PathLike[str], name: str = "trixie") -> str:
    """The path a command run by `run_in(name, ...)` sees for a host path: the repository is at /work in a
    chroot, everything else (binds) keeps its path; on a host of that release nothing changes."""
    p = Path(path).resolve()
    if host_is(name):
        return str(p)
    try:
        return str(Path(REPO_INSIDE) / p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def run_in(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    binds: Iterable[str | os.PathLike[str]] = (),
    cwd: str | None = None,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in environment `name` with a cleared environment plus `env`.

    `binds` are host folders made visible at the same path; `cwd` is a path as seen by the command (default: the
    repository). Raises RuntimeError when the environment is not available."""
    if not available(name):
        raise RuntimeError(
            f"no {name} environment: the host is '{host_codename() or 'unknown'}' and {chroot_path(name)} is not "
            "built (run the .ci/steps/*_chroot.sh step for it as root)"
        )
    on_host = host_is(name)
    full_env = {"HOME": "/root", "PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    full_env.update(env or {})
    env_args = [f"{k}={v}" for k, v in full_env.items()]
    workdir = cwd or (str(REPO_ROOT) if on_host else REPO_INSIDE)
    guard = ["timeout", "-k", str(KILL_AFTER_S), str(max(1, round(timeout)))]
    if on_host:
        cmd = [*guard, "env", "-i", "-C", workdir, *env_args, *argv]
        host_env = None
    else:
        bind_list = [str(Path(b).resolve()) for b in binds]
        for b in bind_list:
            if not Path(b).is_dir():
                raise ValueError(f"bind {b} is not an existing folder")
        cmd = [
            *guard,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            _NAMESPACE_SCRIPT,
            "sh",
            str(chroot_path(name)),
            workdir,
            str(len(bind_list)),
            *bind_list,
            *env_args,
            *argv,
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


def run_in_trixie(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """`run_in("trixie", ...)`."""
    return run_in("trixie", argv, **kwargs)


def dpkg_version(name: str | None, package: str) -> str:
    """The upstream version of an installed package ("5.3.4.1") in environment `name`, or on the host when `name`
    is None; "?" when it is not installed."""
    status = (Path("/") if name is None else root(name)) / "var/lib/dpkg/status"
    try:
        block = None
        for line in status.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Package: "):
                block = line[9:].strip()
            elif block == package and line.startswith("Version: "):
                return line[9:].strip().split(":")[-1].split("+")[0].split("-")[0].split("~")[0]
    except OSError:
        pass
    return "?"
