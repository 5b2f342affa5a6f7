"""bench/gpu/tier_table.py must keep running: at toy size on CPU, in one command, as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu" / "tier_table.py"


@pytest.mark.slow
def test_tier_table_runs_at_toy_size(tmp_path):
    out = tmp_path / "tiers"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--size",
            "toy",
            "--out",
            str(out),
            "--tiers",
            "full,bf16,gguf-q8",
            "--cold-starts",
            "0",
            "--steps",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "tier_table.json").read_text())
    rows = {r["tier_requested"]: r for r in data["rows"]}
    assert rows["gguf-q8"]["weights"] == "Q8_0" and not rows["gguf-q8"].get("error")
    assert set(rows["full"]["jobs"]) == {"edit_1440x720", "gen_1024"}
    text = (out / "tier_table.md").read_text()
    assert "| gguf-q8 |" in text and "Cold start" in text and "PSNR dB" in text


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three daemon-like starts, one of them compiling from scratch on 2 shared CPU cores
def test_the_second_cold_start_reuses_what_the_first_compiled(tmp_path):
    out = tmp_path / "cold"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "toy", "--out", str(out), "--tiers", "", "--cold-starts", "2"]
        + ["--steps", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "tier_table.json").read_text())
    cold = {c["case"]: c for c in data["cold"]}
    assert set(cold) == {"no compile", "compile, empty cache", "compile, warm cache"}
    assert all(not c.get("error") for c in cold.values()), cold
    empty, warm = cold["compile, empty cache"], cold["compile, warm cache"]
    assert empty["compiled"].startswith("applied") and empty["fx_graph_cache"]["miss"] > 0
    assert warm["fx_graph_cache"]["hit"] > 0 and warm["fx_graph_cache"]["miss"] == 0
    assert (out / "work" / "compile-cache" / "artifacts.bin").stat().st_size > 0
    assert "| compile, warm cache |" in (out / "tier_table.md").read_text()
