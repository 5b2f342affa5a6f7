"""A Node.js client written from docs/protocol.md alone talks to a real `ace-bridge serve --demo` daemon: hello,
welcome, one `inpaint` job (accepted / started / progress / result / done), result checks, ack; and a wrong token
gets the documented `unauthorized` error. Proves the document is enough for a client in another language."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import prerequisites
import pytest

CLIENT_DIR = Path(__file__).resolve().parent / "node_client"
DEPENDENCIES = ("ws", "@msgpack/msgpack")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        prerequisites.missing(f"{name} not found (.ci/steps/25_node.sh installs nodejs and npm)")
    return path


@pytest.fixture(scope="module")
def node() -> str:
    node = _tool("node")
    npm = _tool("npm")
    if not all((CLIENT_DIR / "node_modules" / dep / "package.json").is_file() for dep in DEPENDENCIES):
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    return node


def run_client(node: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
    return subprocess.run(
        [node, "client.mjs", *args], cwd=CLIENT_DIR, capture_output=True, text=True, timeout=150, env=env
    )


def test_node_client_runs_an_inpaint_job(node: str, demo_daemon) -> None:
    proc = run_client(node, demo_daemon.url, demo_daemon.token)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    lines = proc.stdout.splitlines()
    tasks = next(line for line in lines if line.startswith("tasks: ")).split()[1:]
    assert "inpaint" in tasks, output
    expected = [
        "accepted job_id=",
        "started",
        "progress 1/2 ",
        "progress 2/2 ",
        "done",
        "result 64x48 rgba8 seed=1234: alpha 0 outside the mask",
        "acked",
        "closed 1000",
        "resumed without redelivery",
        "OK",
    ]
    found = [next((i for i, line in enumerate(lines) if line.startswith(prefix)), None) for prefix in expected]
    assert None not in found and found == sorted(found), output
    assert proc.stderr == "", output


def test_node_client_wrong_token_is_unauthorized(node: str, demo_daemon) -> None:
    proc = run_client(node, demo_daemon.url, "not-the-token", "--expect-unauthorized")
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert proc.stdout.splitlines()[-2:] == ["closed 1008 unauthorized", "OK unauthorized"], output
    assert proc.stdout.startswith("error unauthorized: "), output

    # The same wrong token in a normal run is a failure with a message, not a hang or a crash.
    proc = run_client(node, demo_daemon.url, "not-the-token")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("FAIL: handshake refused: unauthorized"), proc.stderr
