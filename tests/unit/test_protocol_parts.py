"""Geometry, discovery, the task table and raw image helpers of the protocol package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ace_protocol import discovery
from ace_protocol.errors import ProtocolError
from ace_protocol.geometry import Bounds, Extent, context_region
from ace_protocol.images import ImagePayload, swap_red_blue
from ace_protocol.tasks import TASKS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("selection", "canvas", "padding", "expected"),
    [
        (Bounds(10, 10, 20, 20), Extent(100, 100), 4, Bounds(6, 6, 28, 28)),
        (Bounds(0, 0, 20, 20), Extent(100, 100), 8, Bounds(0, 0, 28, 28)),  # clamped at the canvas edge
        (None, Extent(300, 200), 8, Bounds(0, 0, 300, 200)),  # no selection: the whole canvas
        (Bounds(0, 40, 100, 5), Extent(100, 100), 0, Bounds(0, 30, 100, 25)),  # padded to 4:1, not cropped
        (Bounds(40, 0, 5, 100), Extent(100, 100), 0, Bounds(30, 0, 25, 100)),
        (Bounds(0, 0, 400, 2), Extent(400, 50), 0, Bounds(0, 0, 400, 50)),  # canvas itself too wide: as much as fits
        (Bounds(90, 90, 20, 20), Extent(100, 100), 0, Bounds(90, 90, 10, 10)),  # selection beyond the canvas
    ],
)
def test_context_region(selection, canvas, padding, expected):
    assert context_region(selection, canvas, padding) == expected


def test_discovery_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ACE_BRIDGE_CONFIG_DIR", str(tmp_path))
    assert discovery.resolve() == discovery.Endpoint(discovery.DEFAULT_URL, None, "default")
    (tmp_path / "runtime.json").write_text(json.dumps({"url": "ws://127.0.0.1:9000/v1/ws"}))
    (tmp_path / "token").write_text("from-file\n")
    assert discovery.resolve().url.endswith(":9000/v1/ws") and discovery.resolve().token == "from-file"
    monkeypatch.setenv("ACE_BRIDGE_URL", "ws://127.0.0.1:9100/v1/ws")
    monkeypatch.setenv("ACE_BRIDGE_TOKEN", "from-env")
    assert discovery.resolve() == discovery.Endpoint("ws://127.0.0.1:9100/v1/ws", "from-env", "ACE_BRIDGE_URL")
    assert discovery.resolve(port=9200, token="arg").url == "ws://127.0.0.1:9200/v1/ws"
    assert discovery.resolve("ws://h:1/v1/ws", "arg").token == "arg"


def test_config_dir_follows_the_platform_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("ACE_BRIDGE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert discovery.config_dir() == tmp_path / "ace-bridge"


def test_task_parameters_are_validated_with_names_and_defaults():
    spec = TASKS["local_edit"]
    params = spec.validate_params({"mode": "canny", "steps": 10})
    assert params["mode"] == "canny" and params["steps"] == 10 and params["guidance"] == 50.0
    for bad in (
        {"mode": "sketch"},
        {"steps": 101},
        {"seed": -2},
        {"guidance": float("inf")},
        {"count": True},
        {"face": True},
    ):
        with pytest.raises(ProtocolError) as error:
            spec.validate_params(bad)
        assert next(iter(bad)) in error.value.message


def test_bgra_to_rgba_swaps_red_and_blue_only():
    assert swap_red_blue(bytes([1, 2, 3, 4, 5, 6, 7, 8])) == bytes([3, 2, 1, 4, 7, 6, 5, 8])
    gray = ImagePayload(2, 1, "gray8", b"\x10\x20").to_rgba8()
    assert gray.data == bytes([16, 16, 16, 255, 32, 32, 32, 255])


def test_the_protocol_package_imports_nothing_heavy():
    code = (
        "import sys, ace_protocol, ace_protocol.client, ace_protocol.codec, ace_protocol.geometry, "
        "ace_protocol.discovery, ace_protocol.tasks\n"
        "heavy = [m for m in ('numpy', 'torch', 'aiohttp', 'PIL', 'PyQt5', 'PyQt6', 'gi', 'krita') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "shared"), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
