"""Host-side helpers for the Krita tests: find the Krita installs, install the plugin into a throw-away profile,
run `kritarunner` (headless) or `krita` under Xvfb with HOME in a temporary folder, always under `timeout -k`.

Installs: the host's apt Krita (5.1.5 on bookworm, 5.2.9 on trixie) and every environment of tests/editors/chroot.py
that has `kritarunner`: bookworm (5.1, when the host is not bookworm), trixie (5.2), sid (5.3) and
sid-experimental (6.0), built by the .ci/steps/2*_chroot.sh steps. The tests are parametrized over all of them.
Under CI (env CI=true) every expected Krita version (`EXPECTED_VERSIONS`, env ACE_EXPECT_KRITA="5.1 5.2 5.3 6.0")
must be among them: a missing one is a failing parameter, not a skip.
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
#: Shared by the GUI test runner plugins (krita_scripts/ace_*_runner); travels inside each runner's package.
RUNNER_HARNESS = SCRIPTS / "runner_harness.py"
KILL_AFTER_S = 10
EXPECTED_VERSIONS = tuple((os.environ.get("ACE_EXPECT_KRITA") or "5.1 5.2 5.3 6.0").split())
#: The CI step that provides each Krita version (for the message when one is missing).
STEP_FOR_VERSION = {
    "5.1": "15_krita_host.sh (bookworm host) or 23_bookworm_chroot.sh",
    "5.2": "20_trixie_chroot.sh",
    "5.3": "21_sid_chroot.sh",
    "6.0": "22_sid_experimental_chroot.sh",
}


@dataclass(frozen=True)
class KritaInstall:
    name: str
    where: str  # "host" or an environment of chroot.ENVIRONMENTS
    version: str = "?"  # upstream version, e.g. 5.3.4.1

    @property
    def series(self) -> str:
        """major.minor, e.g. "6.0"."""
        return ".".join(self.version.split(".")[:2])

    def path(self, p: str | os.PathLike[str]) -> str:
        """How the editor sees a host path."""
        if self.where == "host":
            return str(Path(p).resolve())
        return chroot.inside_path(p, self.where)

    def run(
        self, argv: Sequence[str], env: Mapping[str, str], timeout: float, binds: Sequence[Path] = ()
    ) -> subprocess.CompletedProcess[str]:
        if self.where != "host":
            return chroot.run_in(self.where, list(argv), env=dict(env), timeout=timeout, binds=list(binds))
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        cmd = ["timeout", "-k", str(KILL_AFTER_S), str(int(timeout)), *argv]
        return subprocess.run(
            cmd,
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            cwd=str(REPO),
        )


def krita_installs() -> list[KritaInstall]:
    found = []
    if shutil.which("kritarunner"):
        version = chroot.dpkg_version(None, "krita")
        found.append(KritaInstall(f"host-krita-{version}", "host", version))
    for name in chroot.ENVIRONMENTS:
        if chroot.host_is(name) or not chroot.available(name):
            continue
        if (chroot.chroot_path(name) / "usr/bin/kritarunner").is_file():
            version = chroot.dpkg_version(name, "krita")
            found.append(KritaInstall(f"{name}-krita-{version}", name, version))
    return found


def missing_versions(installs: Sequence[KritaInstall]) -> list[str]:
    """Expected Krita series (EXPECTED_VERSIONS) that no install provides."""
    have = {i.series for i in installs}
    return [v for v in EXPECTED_VERSIONS if v not in have]


def install_params() -> list:
    """One parameter per Krita install; under CI one failing parameter per expected version that is missing."""
    installs = krita_installs()
    params = [pytest.param(i, id=i.name) for i in installs]
    if in_ci():
        params += [pytest.param(f"missing:{v}", id=f"missing-krita-{v}") for v in missing_versions(installs)]
    if not params:
        mark = pytest.mark.skipif(True, reason="no Krita installed (run .ci/steps/15_krita_host.sh)")
        params.append(pytest.param(None, id="no-krita", marks=mark))
    return params


def require(install: KritaInstall | str | None) -> KritaInstall:
    if isinstance(install, str) and install.startswith("missing:"):
        version = install.split(":", 1)[1]
        pytest.fail(
            f"CI=true but Krita {version} is not installed: run .ci/steps/"
            f"{STEP_FOR_VERSION.get(version, '*_chroot.sh')} as root"
        )
    if not isinstance(install, KritaInstall):
        pytest.fail("CI=true but no Krita is installed: run .ci/steps/15_krita_host.sh and the chroot steps")
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


def install_runner(pykrita: Path, name: str) -> None:
    """Copy the test runner plugin `name` (krita_scripts/<name>/ and <name>.desktop) into the profile's `pykrita`
    folder, with the shared runner_harness.py inside its package: Krita loads each plugin as its own top-level
    package, and a module inside it is found the same way on every Krita version."""
    shutil.copytree(SCRIPTS / name, pykrita / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(RUNNER_HARNESS, pykrita / name / RUNNER_HARNESS.name)
    shutil.copyfile(SCRIPTS / f"{name}.desktop", pykrita / f"{name}.desktop")


def run_script(install: KritaInstall, home: Path, module: str, config: dict, timeout: float = 120) -> dict:
    """Run `kritarunner -s module -f main -- CONFIG` headless; returns the JSON result the script wrote."""
    config_path = home / f"{module}.config.json"
    result_path = home / f"{module}.result.json"
    result_path.unlink(missing_ok=True)
    config = {**config, "result": install.path(result_path), "tmp": install.path(home)}
    config_path.write_text(json.dumps(config))
    env = {**profile_env(home), "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": install.path(SCRIPTS)}
    proc = install.run(
        ["kritarunner", "-s", module, "-f", "main", "--", install.path(config_path)], env, timeout, binds=[home]
    )
    if not result_path.is_file():
        raise AssertionError(f"{module} wrote no result (rc {proc.returncode}); output:\n{proc.stdout[-6000:]}")
    result = json.loads(result_path.read_text())
    result["output"] = proc.stdout
    result["rc"] = proc.returncode
    return result
