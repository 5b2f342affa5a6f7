"""bench/gpu/bench_flux.py must keep running: its tiny configuration on CPU, as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu" / "bench_flux.py"


@pytest.mark.slow
def test_bench_flux_tiny_runs_and_writes_rows(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--out", str(out), "--steps-timed", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "packages needed beyond torch" in proc.stdout
    assert "extrapolated to 28" in proc.stdout

    data = json.loads((out / "bench_flux.json").read_text())
    assert data["meta"]["ceiling_tflops"] > 0
    rows = data["rows"]
    modes = {r["mode"] for r in rows}
    assert {
        "eager",
        "fuse_lora",
        "fuse_qkv",
        "attention",
        "vae_channels_last",
        "compile",
        "fp8",
        "cache",
        "offload",
    } <= modes
    by = {(r["mode"], r["workload"]): r for r in rows}
    for wl in ("edit_1440x720", "gen_1024"):
        for mode in ("eager", "fuse_lora", "fuse_qkv", "vae_channels_last", "cache"):
            r = by[(mode, wl)]
            assert r["status"] == "ok", r
            for key in ("s_per_step", "s_per_28_image", "speedup_vs_eager", "tflops", "frac_ceiling"):
                assert isinstance(r[key], float) and r[key] > 0, (mode, wl, key, r)
        assert by[("eager", wl)]["speedup_vs_eager"] == pytest.approx(1.0)
        # features a CPU lacks are skipped with a reason, never silently missing
        for mode in ("fp8", "offload"):
            assert by[(mode, wl)]["status"] == "skipped" and by[(mode, wl)]["note"]
    assert data["meta"]["workloads"]["edit_1440x720"]["image_tokens"] == 162  # tiny stand-in for 4050

    md = (out / "bench_flux.md").read_text()
    assert md.count("| eager |") == 2 and "s_per_28_image" in md


def test_flop_formula_matches_reference_anchors():
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_flux

    cfg = bench_flux.SIZES["full"]["transformer"]
    # torch.utils.flop_counter.FlopCounterMode on the full-size FLUX transformer: 74.3927 / 165.4745 / 73.5033 TF
    assert bench_flux.flux_flops_per_step(cfg, 4096) / 1e12 == pytest.approx(74.3927, abs=2e-3)
    assert bench_flux.flux_flops_per_step(cfg, 8192) / 1e12 == pytest.approx(165.4745, abs=2e-3)
    assert bench_flux.flux_flops_per_step(cfg, 4050) / 1e12 == pytest.approx(73.5033, abs=2e-3)


def test_ace_lora_key_set_converts_at_real_width():
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    from lora_keys import kohya_to_diffusers, make_kohya_lora

    sd = make_kohya_lora(3072, 19, 38, 1, device="cpu", dtype=torch.bfloat16)
    assert len(sd) == 912  # 304 modules x (down, up, alpha)
    out = kohya_to_diffusers(sd, 3072)
    assert out["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"].shape == (12288, 1)
    assert out["transformer.transformer_blocks.18.attn.add_v_proj.lora_B.weight"].shape == (3072, 1)
