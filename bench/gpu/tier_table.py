#!/usr/bin/env python3
"""Memory-tier table: ACE Bridge's engine on every tier, under hard VRAM caps, with random weights (no download).

  python bench/gpu/tier_table.py --size toy --out tmp         # CPU, one command, about a minute (CI smoke test)
  python bench/gpu/tier_table.py --size full --out OUT        # on a GPU: full FLUX.1-Fill architecture

What it does: builds a model root (the tiny test model at `toy`; at `full` the real FLUX.1-Fill-dev architecture,
11.9 B transformer + T5-XXL + CLIP-L + FLUX VAE, random weights, the tiny tokenizers), writes GGUF files of its
transformer with `ace-bridge models quantize` (Q8_0, Q5_0, Q4_0; the gguf package writes no K types), then for each
tier runs the engine in a fresh process (so peak host RAM is that tier's own) on the two reference jobs: the ACE++
reference edit (1440x720 canvas at full size) and a generate (1024x1024), same seed, and reports per tier and job:

  s/job        seconds for one job (full: `--steps` timed steps extrapolated to 28, plus the decode; toy: the run)
  ratio        to the unconstrained tier (`full`) measured in the same run
  VRAM GB      peak allocated (CUDA) - "-" on the CPU
  RAM GB       peak resident set of the worker process
  PSNR dB      decoded image against the `bf16` tier's result with the same seed (same text-encoder placement and
               tiled VAE, so only the weights differ): the quantisation error proxy

On a GPU `--caps 6,8,12,16,24` adds one row per cap: `torch.cuda.set_per_process_memory_fraction` holds the worker to
that many GB and the engine's tier choice sees only that much free VRAM (tier `auto`). Cold start (process start to
first result) is measured at the end as `serve` starts: without compiling, then with `--compile` and an empty compile
cache, then with the cache the previous start left (`--cold-starts N`: N-1 warm starts; 0: none).
Random weights make step times right and PSNR a proxy only (no picture to judge).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(ROOT / "shared")):
    if p not in sys.path:
        sys.path.insert(0, p)

TIERS = ["full", "bf16", "fp8", "gguf-q8", "gguf-q5", "gguf-q4", "group-offload", "sequential-offload"]
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0")
WORKLOADS = {
    "full": {"edit_1440x720": (1440, 720), "gen_1024": (1024, 1024)},
    "toy": {"edit_1440x720": (144, 72), "gen_1024": (96, 96)},
}  # toy: the same shapes, 1/10 and ~1/10
STEPS = 28
FULL = {  # FLUX.1-Fill-dev, T5-XXL, CLIP-L, FLUX VAE (bench_flux.py's numbers)
    "transformer": dict(
        patch_size=1,
        in_channels=384,
        out_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    "t5": dict(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    ),
    "clip": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
}


# ----------------------------------------------------------------------------------------------------- the model
def build_root(size: str, work: Path) -> Path:
    """A model root the engine loads: the tiny model, or the full architecture with random weights."""
    root = work / f"model-{size}"
    if (root / "FLUX.1-Fill-dev" / "model_index.json").is_file():
        return root
    from bridge_server.engine.tiny import build_tiny_model

    if size == "toy":
        build_tiny_model(root, full=False)
        return root
    import json as _json

    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from bridge_server.engine.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()  # tokenizers + scheduler; every module replaced by a full-size random one
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            pipe.transformer = FluxTransformer2DModel(**FULL["transformer"]).eval()
            clip_tok = pipe.tokenizer
            pipe.text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    **FULL["clip"],
                    bos_token_id=clip_tok.bos_token_id,
                    eos_token_id=clip_tok.eos_token_id,
                    pad_token_id=clip_tok.pad_token_id,
                )
            ).eval()
            pipe.text_encoder_2 = T5EncoderModel(T5Config(**FULL["t5"])).eval()
            pipe.vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=16,
                norm_num_groups=32,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.1159,
                scaling_factor=0.3611,
            ).eval()
        finally:
            torch.set_default_dtype(torch.float32)
    pipe.register_modules(
        transformer=pipe.transformer, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, vae=pipe.vae
    )
    pipe.to("cpu")
    pipe.save_pretrained(root / "FLUX.1-Fill-dev", safe_serialization=True, max_shard_size="10GB")
    (root / "BENCH_RANDOM_WEIGHTS.json").write_text(_json.dumps({"random": True}))
    return root


def write_ggufs(root: Path) -> dict[str, float]:
    """Q8_0/Q5_0/Q4_0 files of the Fill transformer in ROOT/gguf (kept between runs). Returns seconds per type."""
    from bridge_server.models.quantize import quantize

    times = {}
    for qtype in GGUF_TYPES:
        out = root / "gguf" / f"flux1-fill-dev-{qtype}.gguf"
        if out.is_file():
            continue
        started = time.monotonic()
        quantize(root / "FLUX.1-Fill-dev", out, qtype)
        times[qtype] = round(time.monotonic() - started, 1)
    return times


# ------------------------------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> int:
    """One tier (and cap) in this process: load, run each workload once, print one JSON line."""
    import numpy as np
    import torch

    from bridge_server.engine import manager
    from bridge_server.engine.ace_plus import AcePlusEngine
    from bridge_server.engine.base import EngineJob

    cuda = torch.cuda.is_available()
    if cuda and args.cap:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap * 1e9 / total))
        real_vram = manager.vram

        def capped() -> dict[str, float] | None:
            got = real_vram() or {"free_gib": 0.0, "total_gib": 0.0}
            return {"free_gib": min(got["free_gib"], args.cap * 1e9 / 2**30), "total_gib": args.cap * 1e9 / 2**30}

        manager.vram = capped
    started = time.monotonic()
    engine = AcePlusEngine(
        Path(args.root),
        tier=args.tier,
        t5_max_length=args.t5_len,
        idle_unload_s=None,
        optimizations=({"attention": "auto"} if cuda else {"attention": "off"}) | {"compile": True}
        if args.compile_cache
        else ({"attention": "auto"} if cuda else None),
        compile_cache=Path(args.compile_cache) if args.compile_cache else None,
    )
    out: dict = {"tier_requested": args.tier, "cap_gb": args.cap, "jobs": {}}
    try:
        if args.compile_cache:
            # as `serve --compile` does: warm up (compile) at the first job's size, then the job
            w, h = next(iter(WORKLOADS[args.size].values()))
            out["warm_up_s"] = sum(engine.warm_up(sizes=((w, h),)).values())
            out["compiled"] = engine.state().get("optimizations", {}).get("compile", "")
        for name, (w, h) in WORKLOADS[args.size].items():
            edit = name.startswith("edit")
            image = np.full((h, w // 2 if edit else h, 4), 128, np.uint8) if edit else None
            mask = None
            if image is not None:
                mask = np.zeros(image.shape[:2], np.uint8)
                mask[h // 4 : 3 * h // 4, :] = 255
            job = EngineJob(
                task="reference_edit" if edit else "generate",
                prompt="{image} a red apple",
                seed=7,
                params={"steps": args.steps, "width": w, "height": h, "max_tokens": 16384},
                image=image,
                mask=mask,
                references=[np.full((h, w // 2, 4), 90, np.uint8)] if edit else [],
            )
            if edit and "subject" not in engine.available_tasks():
                job.task, job.references = "inpaint", []
                job.image = np.full((h, w, 4), 128, np.uint8)
                job.mask = np.zeros((h, w), np.uint8)
                job.mask[h // 4 : 3 * h // 4, :] = 255
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.monotonic()
            result = engine.run(job, lambda *_: None, lambda: False)
            seconds = time.monotonic() - t0
            if "first_result_s" not in out:
                out["first_result_s"] = round(time.monotonic() - started + args.import_s, 2)
            per_job = seconds if args.size == "toy" else seconds * STEPS / args.steps  # decode counted once: small
            np.save(Path(args.work) / f"{args.tier}-{args.cap}-{name}.npy", result.rgb)
            out["jobs"][name] = {
                "s_per_job": round(per_job, 3),
                "vram_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
            }
        if args.compile_cache:
            from torch._dynamo.utils import counters

            out["fx_graph_cache"] = {k: counters["inductor"][f"fxgraph_cache_{k}"] for k in ("hit", "miss", "bypass")}
        state = engine.state()
        out.update(
            tier=state.get("tier"),
            weights=state.get("weights"),
            reason=state.get("tier_reason"),
            memory_mode=state.get("memory_mode"),
        )
    except Exception as exc:  # noqa: BLE001 - a tier that cannot run here is a row with its reason
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        engine.close()
    out["ram_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def run_worker(args: argparse.Namespace, tier: str, cap: float | None, compile_cache: Path | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--size",
        args.size,
        "--root",
        str(args.root),
        "--tier",
        tier,
        "--work",
        str(args.work),
        "--steps",
        str(args.steps),
        "--t5-len",
        str(args.t5_len),
    ]
    if cap:
        cmd += ["--cap", str(cap)]
    if compile_cache:
        cmd += ["--compile-cache", str(compile_cache)]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.worker_timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"tier_requested": tier, "cap_gb": cap, "error": (proc.stderr or proc.stdout)[-300:].strip(), "jobs": {}}
    out = json.loads(line[len("RESULT ") :])
    out["process_s"] = round(time.monotonic() - started, 2)
    return out


def cold_starts(args: argparse.Namespace) -> list[dict]:
    """Process start to first result, tier auto, as `serve --compile` starts: without compiling, then compiling
    with an empty compile cache, then again with the cache that start left (compile_cache.py)."""
    import shutil

    if args.cold_starts <= 0:
        return []
    cache = Path(args.work) / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    runs = [("no compile", run_worker(args, "auto", None))]
    runs.append(("compile, empty cache", run_worker(args, "auto", None, cache)))
    runs += [("compile, warm cache", run_worker(args, "auto", None, cache)) for _ in range(args.cold_starts - 1)]
    return [{"case": case, **row} for case, row in runs]


def cold_table(cold: list[dict]) -> str:
    lines = [
        "Cold start, process start to first result (tier auto):",
        "",
        "| start | process start -> first result s | of it warm-up/compile s | FX graph cache hit/miss | error |",
        "|---|---|---|---|---|",
    ]
    for c in cold:
        lines.append(
            f"| {c['case']} | {c.get('process_s', '-')} | {c.get('warm_up_s', '-')} | "
            + ("{hit}/{miss}".format(**c["fx_graph_cache"]) if "fx_graph_cache" in c else "-")
            + f" | {c.get('error', '')[:80]} |"
        )
    return "\n".join(lines)


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def table(rows: list[dict], work: Path, size: str) -> str:
    import numpy as np

    names = list(WORKLOADS[size])
    base = next((r for r in rows if r.get("tier") == "full" and not r.get("cap_gb") and not r.get("error")), None)
    head = ["tier asked", "cap GB", "tier run", "weights"]
    for n in names:
        head += [f"{n} s/job", "ratio", "VRAM GB", "PSNR dB"]
    head += ["RAM GB", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["tier_requested"],
            str(r.get("cap_gb") or "-"),
            str(r.get("tier") or "-"),
            str(r.get("weights") or "-"),
        ]
        for n in names:
            job = r.get("jobs", {}).get(n)
            if not job:
                cells += ["-"] * 4
                continue
            ratio = job["s_per_job"] / base["jobs"][n]["s_per_job"] if base and n in base["jobs"] else None
            ref = work / f"bf16-None-{n}.npy"  # the bf16 weights with the same tier settings (tiled VAE)
            mine = work / f"{r['tier_requested']}-{r.get('cap_gb')}-{n}.npy"
            quality = psnr(np.load(mine), np.load(ref)) if ref.is_file() and mine.is_file() else None
            cells += [
                f"{job['s_per_job']:.3f}",
                f"{ratio:.2f}x" if ratio else "-",
                f"{job['vram_gb']:.2f}" if job.get("vram_gb") is not None else "-",
                ("inf" if quality == math.inf else f"{quality:.1f}") if quality is not None else "-",
            ]
        cells += [f"{r.get('ram_gb', 0):.2f}", (r.get("error") or "")[:120]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["toy", "full"], default="toy")
    parser.add_argument("--out", default="tier-table-out")
    parser.add_argument("--tiers", default=",".join(TIERS))
    parser.add_argument("--caps", default="", help="GPU only: comma-separated GB caps, e.g. 6,8,12,16,24")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps run (toy: 4; full: 3, x28/3)")
    parser.add_argument("--t5-len", type=int, default=None)
    parser.add_argument("--worker-timeout", type=float, default=900)
    parser.add_argument("--cold-starts", type=int, default=2, help="cold-start measurements at the end (0: none)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--tier", help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--import-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--compile-cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.size == "toy" else 3)
    args.t5_len = args.t5_len or (16 if args.size == "toy" else 512)
    if args.worker:
        return worker(args)
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = out / "work"
    args.work.mkdir(exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no GPU: toy size only)"
    t0 = time.monotonic()
    args.root = build_root(args.size, args.work)
    build_s = time.monotonic() - t0
    quant_s = write_ggufs(args.root)
    rows = [run_worker(args, tier, None) for tier in args.tiers.split(",") if tier]
    for cap in [float(c) for c in args.caps.split(",") if c] if torch.cuda.is_available() else []:
        rows.append(run_worker(args, "auto", cap))
    cold = cold_starts(args)
    text = [
        f"# Tier table ({args.size}, {device})",
        "",
        f"torch {torch.__version__}; model built in {build_s:.1f} s; GGUF written in {quant_s or 'cache'} s; "
        f"{args.steps} steps per job" + (" (x28 extrapolated)" if args.size == "full" else ""),
        "",
        table(rows, args.work, args.size),
        "",
        cold_table(cold),
    ]
    (out / "tier_table.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "tier_table.json").write_text(json.dumps({"device": device, "rows": rows, "cold": cold}, indent=1))
    print("\n".join(text))
    return 0 if all(not r.get("error") for r in rows if r["tier_requested"] in ("full", "gguf-q8")) else 1


if __name__ == "__main__":
    sys.exit(main())
