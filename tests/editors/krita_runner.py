"""Host-side helpers for the Krita tests: find the Krita installs, install the plugin into a throw-away profile,
run `kritarunner` (headless) or `krita` under Xvfb with HOME in a temporary folder, always under `timeout -k`.

Installs: the host's apt Krita (5.1.5 on bookworm, 5.2.9 on trixie), plus on a bookworm host the trixie chroot's
5.2.9 (.ci/steps/20_trixie_chroot.sh, run through tests/editors/chroot.py), or on a trixie host the bookworm
chroot's 5.1.5 (.ci/steps/15_krita_host.sh). With env CI=true a missing Krita is a
failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chroot  # noqa: E402
from prerequisites import in_ci  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "krita_scripts"
KILL_AFTER_S = 10


def _dpkg_version(root: Path, package: str) -> str:
    status = root / "var/lib/dpkg/status"
    try:
        block = None
        for line in status.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Package: "):
                block = line[9:].strip()
            elif block == package and line.startswith("Version: "):
                return line[9:].strip().split(":")[-1].split("+")[0]
    except OSError:
        pass
    return "?"


def bookworm_chroot() -> Path:
    """Krita 5.1.5 for trixie hosts: the chroot .ci/steps/15_krita_host.sh builds there with mmdebstrap."""
    return Path(os.environ.get("ACE_BOOKWORM_CHROOT") or "/var/cache/ace-bridge/bookworm")


def _bookworm_ready() -> bool:
    root = bookworm_chroot()
    return (hasattr(os, "geteuid") and os.geteuid() == 0 and (root / ".ace-bridge-ready").is_file()
            and (root / "usr/bin/kritarunner").is_file() and shutil.which("unshare") is not None)


def _run_in_bookworm(argv: Sequence[str], env: Mapping[str, str], timeout: float,
                     binds: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    """Like chroot.run_in_trixie, for the bookworm chroot: own mount namespace, repository at /work."""
    full_env = {"HOME": "/root", "PATH": chroot.DEFAULT_PATH, "LANG": "C.UTF-8", **env}
    bind_list = [str(Path(b).resolve()) for b in binds]
    cmd = ["timeout", "-k", str(KILL_AFTER_S), str(int(timeout)), "unshare", "-m", "--propagation", "private",
           "sh", "-c", chroot._NAMESPACE_SCRIPT, "sh", str(bookworm_chroot()), chroot.REPO_INSIDE,
           str(len(bind_list)), *bind_list, *[f"{k}={v}" for k, v in full_env.items()], *argv]
    return subprocess.run(cmd, env={"PATH": chroot.DEFAULT_PATH, "REPO": str(REPO)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)


@dataclass(frozen=True)
class KritaInstall:
    name: str
    where: str  # host | trixie | bookworm

    def path(self, p: str | os.PathLike[str]) -> str:
        """How the editor sees a host path."""
        if self.where == "trixie":
            return chroot.inside_path(p)
        resolved = Path(p).resolve()
        if self.where == "bookworm":
            try:
                return str(Path(chroot.REPO_INSIDE) / resolved.relative_to(REPO))
            except ValueError:
                return str(resolved)
        return str(resolved)

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float,
            binds: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
        if self.where == "trixie":
            return chroot.run_in_trixie(list(argv), env=dict(env), timeout=timeout, binds=list(binds))
        if self.where == "bookworm":
            return _run_in_bookworm(argv, env, timeout, binds)
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        cmd = ["timeout", "-k", str(KILL_AFTER_S), str(int(timeout)), *argv]
        return subprocess.run(cmd, env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False, cwd=str(REPO))


def krita_installs() -> list[KritaInstall]:
    found = []
    if shutil.which("kritarunner"):
        found.append(KritaInstall(f"host-krita-{_dpkg_version(Path('/'), 'krita')}", "host"))
    if not chroot.host_is_trixie() and chroot.trixie_available():
        root = chroot.chroot_path()
        if (root / "usr/bin/kritarunner").is_file():
            found.append(KritaInstall(f"trixie-krita-{_dpkg_version(root, 'krita')}", "trixie"))
    # On a trixie host the other version (5.1.5) comes from the bookworm chroot; ACE_KRITA_BOOKWORM_CHROOT=1
    # also uses it on a bookworm host (to check this path).
    want_bookworm = chroot.host_is_trixie() or os.environ.get("ACE_KRITA_BOOKWORM_CHROOT") == "1"
    if want_bookworm and _bookworm_ready():
        found.append(KritaInstall(f"bookworm-krita-{_dpkg_version(bookworm_chroot(), 'krita')}", "bookworm"))
    return found


def install_params() -> list:
    installs = krita_installs()
    if installs:
        return [pytest.param(i, id=i.name) for i in installs]
    mark = pytest.mark.skipif(not in_ci(), reason="no Krita installed (run .ci/steps/15_krita_host.sh)")
    return [pytest.param(None, id="no-krita", marks=mark)]


def require(install: KritaInstall | None) -> KritaInstall:
    if install is None:
        pytest.fail("CI=true but no Krita is installed: run .ci/steps/15_krita_host.sh and 20_trixie_chroot.sh")
    return install


def profile_env(home: Path) -> dict[str, str]:
    """HOME and the XDG folders inside `home`; Krita's resources, kritarc and caches all land there."""
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home / "runtime"),
    }
    for key in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    return env


def install_plugin(home: Path) -> Path:
    """`install_krita` into the profile under `home` (the real install code path); returns the pykrita folder."""
    from bridge_server.install.krita import install_krita

    env = profile_env(home)
    pkg = install_krita(Path(env["XDG_DATA_HOME"]) / "krita", Path(env["XDG_CONFIG_HOME"]) / "kritarc")
    return pkg.parent


def run_script(install: KritaInstall, home: Path, module: str, config: dict, timeout: float = 120) -> dict:
    """Run `kritarunner -s module -f main -- CONFIG` headless; returns the JSON result the script wrote."""
    config_path = home / f"{module}.config.json"
    result_path = home / f"{module}.result.json"
    result_path.unlink(missing_ok=True)
    config = {**config, "result": install.path(result_path), "tmp": install.path(home)}
    config_path.write_text(json.dumps(config))
    env = {**profile_env(home), "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": install.path(SCRIPTS)}
    proc = install.run(["kritarunner", "-s", module, "-f", "main", "--", install.path(config_path)], env, timeout,
                       binds=[home])
    if not result_path.is_file():
        raise AssertionError(f"{module} wrote no result (rc {proc.returncode}); output:\n{proc.stdout[-6000:]}")
    result = json.loads(result_path.read_text())
    result["output"] = proc.stdout
    result["rc"] = proc.returncode
    return result
