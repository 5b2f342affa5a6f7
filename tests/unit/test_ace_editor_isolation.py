"""The editor core stays editor-neutral and private: no Qt, GIMP or daemon import; it runs from a clean Python
3.10 with only msgpack and websockets; vendored as `<plugin>._vendor`, nothing appears under a global name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import prerequisites

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "shared"
MODULES = ("forms", "history", "jobs", "naming", "protocol", "provenance", "settings")
FORBIDDEN = ("PyQt5", "PyQt6", "gi", "krita", "torch", "aiohttp", "bridge_server", "numpy", "PIL")


def run(python: str, code: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [python, "-I", "-B", "-c", code, *args], capture_output=True, text=True, env=env, timeout=120, cwd="/"
    )


def test_the_core_imports_nothing_of_an_editor_or_the_daemon():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        f"for m in {MODULES!r}: __import__('ace_editor.' + m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not bad, bad"
    )
    out = run(sys.executable, code, str(SHARED))
    assert out.returncode == 0, out.stderr


def test_vendored_as_a_private_package_it_leaves_no_global_names(tmp_path):
    """What the installer does, by hand: `plugin/_vendor/{ace_protocol,ace_editor,msgpack,websockets}`."""
    import msgpack
    import websockets

    vendor = tmp_path / "plugin" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "plugin" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    for package in (
        SHARED / "ace_protocol",
        SHARED / "ace_editor",
        Path(msgpack.__file__).parent,
        Path(websockets.__file__).parent,
    ):
        shutil.copytree(
            package, vendor / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
        )  # as vendor.py: no C
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from plugin._vendor.ace_editor import forms, jobs\n"
        "from plugin._vendor.ace_protocol import client, codec\n"
        "assert jobs.messages.__name__ == 'plugin._vendor.ace_protocol.messages'\n"
        "assert codec.msgpack.__name__ == 'plugin._vendor.msgpack'\n"
        "assert client.ClientConnection.__module__ == 'plugin._vendor.websockets.sync.client'\n"
        "leaked = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('msgpack', 'websockets', 'ace_protocol', 'ace_editor'))\n"
        "assert not leaked, leaked\n"
        "assert sys.argv[1] == sys.path[0] and not any(p.endswith('_vendor') for p in sys.path)"
    )
    out = run(sys.executable, code, str(tmp_path))
    assert out.returncode == 0, out.stderr


def test_the_core_runs_on_a_clean_python_310():
    python = Path(os.environ.get("ACE_PY310_ENV", REPO / ".cache/py310-clean")) / "bin/python"
    if not python.exists():
        prerequisites.missing(f"clean Python 3.10 env {python} not built: run .ci/steps/12_py310_clean.sh")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from ace_editor import forms, history, jobs, naming, provenance, settings\n"
        "from ace_protocol.tasks import TASKS\n"
        "assert sys.version_info[:2] == (3, 10), sys.version\n"
        "assert forms.params_from(TASKS['inpaint'], {'steps': 0, 'seed': 3}) == {'seed': 3}\n"
        "assert naming.layer_name('inpaint', 'a vase', 3).startswith('[ACE++] inpaint')\n"
        "print('ok')"
    )
    out = run(str(python), code, str(SHARED))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
