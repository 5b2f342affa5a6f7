"""Run Python batch code inside the real GIMP 3 (gimp-console-3.x, no display), host side.

Installs nothing: GIMP comes from the environments of tests/editors/chroot.py that have it -- trixie (GIMP 3.0,
`.ci/steps/20_trixie_chroot.sh`: a chroot on bookworm, apt on a trixie host) and sid (GIMP 3.2,
`.ci/steps/21_sid_chroot.sh`) -- and callers install plug-ins into the throw-away profile themselves. The tests are
parametrized over every install found (`install_params`); under CI (env CI=true) every expected GIMP version
(`EXPECTED_VERSIONS`, env ACE_EXPECT_GIMP="3.0 3.2") must be among them, a missing one is a failing parameter.
GIMP exits 0 when the batch code ran and 64 when it raised; the traceback is in the output.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chroot  # noqa: E402
import prerequisites  # noqa: E402

#: Exit code of gimp-console when the batch code raised.
RC_BATCH_RAISED = 64
#: The environments that ship GIMP 3, oldest first.
GIMP_ENVIRONMENTS = ("trixie", "sid")
EXPECTED_VERSIONS = tuple((os.environ.get("ACE_EXPECT_GIMP") or "3.0 3.2").split())
STEP_FOR_VERSION = {"3.0": "20_trixie_chroot.sh", "3.2": "21_sid_chroot.sh"}
#: Lines a plug-in must not print: Python deprecation warnings and GIMP 3.2's procedure-dialog mnemonic warnings
#: ("Procedure 'python-fu-ace-bridge-inpaint': duplicate mnemonic p for label of properties padding and prompt").
WARNING_LINE = re.compile(r"DeprecationWarning|[Mm]nemonic")
#: ... when they concern our plug-in: a warning located in its folder (PyGObject's deprecations point at the
#: caller), in its vendored libraries, or about one of its procedures. Not ours: GIMP's own plug-ins (3.2.6's
#: python-console: "pyconsole.py:889: PyGIDeprecationWarning: GObject.SIGNAL_RUN_LAST is deprecated") and
#: PyGObject 3.58's own gi/events.py on Python 3.14 ("'asyncio.get_event_loop_policy' is deprecated"), which it
#: meant to silence and which shows only with PYTHONWARNINGS=default.
OURS = re.compile(r"/plug-ins/ace-bridge/|python-fu-ace-bridge")


@dataclass(frozen=True)
class GimpInstall:
    name: str  # e.g. sid-gimp-3.2.6
    where: str  # an environment of chroot.ENVIRONMENTS
    version: str  # upstream version, e.g. 3.2.6

    @property
    def series(self) -> str:
        """major.minor, e.g. "3.2": also the suffix of its binaries and its profile folder's name."""
        return ".".join(self.version.split(".")[:2])

    @property
    def console(self) -> str:
        return f"gimp-console-{self.series}"

    @property
    def gui(self) -> str:
        return f"gimp-{self.series}"

    def has(self, program: str) -> bool:
        return (chroot.root(self.where) / "usr/bin" / program).exists()

    def path(self, p: str | os.PathLike[str]) -> str:
        """How GIMP sees a host path."""
        return chroot.inside_path(p, self.where)

    def run(self, argv, **kwargs):
        """`chroot.run_in` for this install's environment."""
        return chroot.run_in(self.where, argv, **kwargs)


def gimp_installs() -> list[GimpInstall]:
    found = []
    for name in GIMP_ENVIRONMENTS:
        if not chroot.available(name):
            continue
        version = chroot.dpkg_version(name, "gimp")
        if version.startswith("3."):
            install = GimpInstall(f"{name}-gimp-{version}", name, version)
            if install.has(install.console):
                found.append(install)
    return found


def missing_versions(installs: Iterable[GimpInstall]) -> list[str]:
    have = {i.series for i in installs}
    return [v for v in EXPECTED_VERSIONS if v not in have]


def install_params() -> list:
    """One parameter per GIMP install; under CI one failing parameter per expected version that is missing."""
    installs = gimp_installs()
    params = [pytest.param(i, id=i.name) for i in installs]
    if prerequisites.in_ci():
        params += [pytest.param(f"missing:{v}", id=f"missing-gimp-{v}") for v in missing_versions(installs)]
    if not params:
        params.append(pytest.param(None, id="no-gimp"))
    return params


def require(install: GimpInstall | str | None) -> GimpInstall:
    """The install, or fail (CI) / skip (elsewhere) with the step to run."""
    if isinstance(install, GimpInstall):
        return install
    version = install.split(":", 1)[1] if isinstance(install, str) else None
    step = STEP_FOR_VERSION.get(version or "", "20_trixie_chroot.sh and 21_sid_chroot.sh")
    prerequisites.missing(
        f"GIMP {version or '3'} is not available (host '{chroot.host_codename()}'): run .ci/steps/{step} as root"
    )


def warning_lines(output: str) -> list[str]:
    """The lines of GIMP's output that are deprecation or mnemonic warnings about our plug-in (see `OURS`)."""
    return [line for line in output.splitlines() if WARNING_LINE.search(line) and OURS.search(line)]


def gimp_available() -> bool:
    """Some GIMP 3 can run."""
    return bool(gimp_installs())


def default_install() -> GimpInstall | None:
    installs = gimp_installs()
    return installs[0] if installs else None


def run_gimp_batch(
    code_or_file: str | os.PathLike[str],
    profile_dir: str | os.PathLike[str],
    timeout: float = 120,
    *,
    env: Mapping[str, str] | None = None,
    binds: Iterable[str | os.PathLike[str]] = (),
    install: GimpInstall | None = None,
) -> tuple[int, str]:
    """Run Python code (a string, or a `Path` to a .py file) with python-fu-eval in gimp-console-3.x.

    `install` defaults to the oldest GIMP found. `profile_dir` (a host folder) becomes GIMP3_DIRECTORY and HOME,
    so nothing touches a real profile; it is made visible in the chroot at the same path, as are `binds`. A code
    string is written into the profile as `batch_main.py` and run from there, so tracebacks name real lines.
    Returns (exit code, stdout + stderr)."""
    install = install or default_install()
    if install is None:
        raise RuntimeError("no GIMP 3 install: run .ci/steps/20_trixie_chroot.sh / 21_sid_chroot.sh as root")
    profile = Path(profile_dir).resolve()
    profile.mkdir(parents=True, exist_ok=True)
    if isinstance(code_or_file, (str,)) and not isinstance(code_or_file, Path):
        script = profile / "batch_main.py"
        script.write_text(code_or_file, encoding="utf-8")
    else:
        script = Path(code_or_file).resolve()
    inside = install.path(script)
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
    argv = [install.console, "-i", "--quit", "--batch-interpreter=python-fu-eval", "-b", batch]
    if chroot.host_is(install.where):
        proc = install.run(argv, env=full_env, timeout=timeout, cwd=str(profile))
    else:
        proc = install.run(argv, env=full_env, timeout=timeout, binds=[profile, *binds], cwd=str(profile))
    return proc.returncode, proc.stdout or ""
