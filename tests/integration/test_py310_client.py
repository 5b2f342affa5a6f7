"""The shared client works from a bare Python 3.10 with only msgpack and websockets, as inside an editor."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import prerequisites

REPO = Path(__file__).resolve().parents[2]
ENV = Path(os.environ.get("ACE_PY310_ENV", REPO / ".cache/py310-clean"))

SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ace_protocol.client import BridgeClient
from ace_protocol.images import ImagePayload
client = BridgeClient(sys.argv[2], sys.argv[3], client_id="py310", client_name="py310-test")
welcome = client.connect()
w, h = 32, 32
image = ImagePayload(w, h, "bgra8", bytes([30, 60, 90, 255]) * (w * h))
mask = ImagePayload(w, h, "gray8", bytes([0, 255]) * (w * h // 2))
job = client.submit("inpaint", "a hat", image=image, mask=mask, params={"steps": 1, "seed": 1})
kinds = [event.TYPE for event in job.events(timeout=60)]
client.ack(job.id)
# A 320x320 region is big enough to travel through the daemon's shared memory (Linux, same machine).
w = h = 320
image = ImagePayload(w, h, "bgra8", bytes([30, 60, 90, 255]) * (w * h))
mask = ImagePayload(w, h, "gray8", bytes([0, 255]) * (w * h // 2))
job = client.submit("inpaint", "a hat", image=image, mask=mask, params={"steps": 1, "seed": 1})
events = list(job.events(timeout=120))
client.ack(job.id)
client.close()
print(sys.version_info[:2], kinds, "shared memory:", client.shared_memory_active, client.shared_memory_problem)
assert kinds[-2:] == ["result", "done"], kinds
assert [e.TYPE for e in events][-2:] == ["result", "done"], events
assert len(events[-2].image.data) == w * h * 4
if sys.platform.startswith("linux"):
    assert client.shared_memory_active, client.shared_memory_problem
"""


def test_the_client_runs_a_job_from_a_clean_python_310(demo_daemon):
    python = ENV / "bin/python"
    if not python.exists():
        prerequisites.missing(f"clean Python 3.10 env {python} not built: run .ci/steps/12_py310_clean.sh")
    run = subprocess.run(
        [str(python), "-I", "-c", SCRIPT, str(REPO / "shared"), demo_daemon.url, demo_daemon.token],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert run.returncode == 0, run.stderr
    assert "(3, 10)" in run.stdout
