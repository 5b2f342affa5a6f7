"""A painter who runs `pip install ace-bridge` (no checkout) gets the command and both editor plugins from the wheel.

The test builds the wheel and the sdist from a copy of the working tree, installs the wheel into a fresh virtual
environment (with only the libraries the install commands import, so no torch is pulled in), runs
`ace-bridge install krita|gimp --profile-dir TMP` from outside any checkout and checks the files that land.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What `ace-bridge install` imports (cli, vendoring); the engine's torch/diffusers are not needed for it.
INSTALL_TIME_DEPS = ["aiohttp", "numpy", "pillow", "msgpack", "websockets", "platformdirs"]

pytestmark = pytest.mark.slow


def _copy_source(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for rel in listed:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = _copy_source(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)])
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], cwd=src)
    return {"wheel": next(dist.glob("ace_bridge-*.whl")), "sdist": next(dist.glob("ace_bridge-*.tar.gz"))}


def test_the_wheel_and_the_sdist_carry_both_plugins_the_editor_core_and_the_licence(built):
    names = zipfile.ZipFile(built["wheel"]).namelist()
    for expected in (
        "bridge_server/install/plugin_krita/ace_bridge/__init__.py",
        "bridge_server/install/plugin_krita/ace_bridge.desktop",
        "bridge_server/install/plugin_krita/ace_bridge.action",
        "bridge_server/install/plugin_gimp/ace-bridge/ace-bridge.py",
        "ace_editor/jobs.py",
        "ace_protocol/client.py",
        "bridge_server/server/panel/static/index.html",
    ):
        assert expected in names, expected
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any("/_vendor/" in n for n in names), "vendored copies are made at install time, not shipped"
    sdist = tarfile.open(built["sdist"]).getnames()
    assert any(n.endswith("plugins_krita/ace_bridge/docker.py") for n in sdist)
    assert any(n.endswith("shared/ace_editor/forms.py") for n in sdist)
    assert any(n.endswith("/LICENSE") for n in sdist)


def test_a_fresh_venv_with_only_the_wheel_installs_both_plugins(built, tmp_path: Path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    constraints = REPO / ".ci" / "constraints.txt"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(built["wheel"])])
    _run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), *INSTALL_TIME_DEPS])
    ace = venv / "bin" / "ace-bridge"
    away = tmp_path / "elsewhere"  # not inside any checkout: the sources must come from the installed wheel
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    krita = tmp_path / "krita-profile"
    out = _run([str(ace), "install", "krita", "--profile-dir", str(krita)], cwd=away, env=env)
    assert "installed the krita plugin" in out.stdout
    pkg = krita / "pykrita" / "ace_bridge"
    assert (krita / "pykrita" / "ace_bridge.desktop").is_file() and (krita / "actions" / "ace_bridge.action").is_file()
    for rel in (
        "__init__.py",
        "docker.py",
        "_vendor/ace_protocol/client.py",
        "_vendor/ace_editor/jobs.py",
        "_vendor/msgpack/__init__.py",
        "_vendor/websockets/__init__.py",
        "_vendor/msgpack/LICENSE",
        "_vendor/websockets/LICENSE",
    ):
        assert (pkg / rel).is_file(), rel
    gimp = tmp_path / "gimp-profile"
    _run([str(ace), "install", "gimp", "--profile-dir", str(gimp)], cwd=away, env=env)
    plugin = next(gimp.rglob("ace-bridge.py")).parent
    for rel in (
        "acegimp_gimp.py",
        "acegimp_logic.py",
        "_vendor/ace_protocol/client.py",
        "_vendor/ace_editor/forms.py",
        "_vendor/msgpack/LICENSE",
        "_vendor/websockets/LICENSE",
    ):
        assert (plugin / rel).is_file(), rel
    installed = subprocess.run(
        [str(py), "-c", "import bridge_server, sys; print(bridge_server.__file__)"],
        capture_output=True,
        text=True,
        cwd=away,
        env=env,
    ).stdout
    assert str(venv) in installed, "the command must run from the wheel, not from the checkout"
