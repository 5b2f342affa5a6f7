#!/usr/bin/env python3
"""FLUX.1-Fill-dev + ACE++ LoRA speed benchmark with random weights (no download), one optimisation on top of another.

  python bench/gpu/bench_flux.py --size full --out OUT      # on a GPU (H100/H200), < 8 minutes
  python bench/gpu/bench_flux.py --size tiny --out tmp      # CPU smoke test, < 60 s

Builds the real architecture (transformer 19+38 blocks x 3072, T5-XXL, CLIP-L, FLUX VAE) directly on the GPU in bf16
with random weights (the time of a step does not depend on the weight values), loads a random rank-64 LoRA with the
ACE++ kohya key set, encodes one prompt, then for each mode (cumulative: each adds one optimisation to the previous)
times a few denoising steps of an ACE++ reference edit (1440x720 canvas, 4050 image tokens) and a 1024x1024 generate,
and extrapolates to 28 steps. Rows are written to OUT/bench_flux.md and OUT/bench_flux.json as they are measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(HERE), str(ROOT), str(ROOT / "shared")):  # shared/ holds ace_protocol (the engine imports it)
    if p not in sys.path:
        sys.path.insert(0, p)

# packages beyond torch that must be importable on the GPU machine (carried as wheels where missing)
NEEDED = ["diffusers", "transformers", "peft", "accelerate", "safetensors", "huggingface_hub", "importlib_metadata"]
OPTIONAL = ["torchao"]
ALL_MODES = ["eager", "fuse_lora", "fuse_qkv", "attention", "vae_channels_last", "compile", "fp8", "cache", "offload"]
STEPS = 28
T5_LEN = 512

SIZES = {
    "full": {
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
        "vae": dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32),
        "workloads": {"edit_1440x720": (720, 1440), "gen_1024": (1024, 1024)},
        "lora_rank": 64,
        "matmul_n": 8192,
    },
    "tiny": {
        "transformer": dict(
            patch_size=1,
            in_channels=384,
            out_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ),
        "t5": dict(
            vocab_size=1000,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
        ),
        "clip": dict(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=2,
        ),
        "vae": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4),
        "workloads": {"edit_1440x720": (144, 288), "gen_1024": (128, 128)},  # 9x18 and 8x8 tokens
        "lora_rank": 4,
        "matmul_n": 512,
    },
}


# ------------------------------------------------------------------------------------------------------ helpers
def log(msg: str = "") -> None:
    print(msg, flush=True)


def check_packages() -> dict[str, str]:
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    log(f"python {found['python']}, torch {torch.__version__} (cuda {torch.version.cuda})")
    log(
        "packages needed beyond torch (carry as wheels where missing): "
        + ", ".join(NEEDED)
        + "; optional: "
        + ", ".join(OPTIONAL)
    )
    missing = []
    for name in NEEDED + OPTIONAL:
        try:
            mod = importlib.import_module(name)
            found[name] = getattr(mod, "__version__", "?")
            log(f"  {name:18s} {found[name]}")
        except Exception as exc:  # noqa: BLE001
            found[name] = f"MISSING ({type(exc).__name__}: {str(exc)[:80]})"
            log(f"  {name:18s} {found[name]}")
            if name in NEEDED:
                missing.append(name)
    if missing:
        log(f"cannot run without: {', '.join(missing)}")
        sys.exit(2)
    return found


def flux_flops_per_step(cfg: dict, n_img: int, n_txt: int = T5_LEN) -> float:
    """Analytic FLOPs of one FLUX transformer forward (2 x MAC), matching torch's FlopCounterMode on the
    full-size transformer (74.39 TF at 4096+512 tokens, 165.47 TF at 8192+512, 73.50 TF at 4050+512)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    seq = n_img + n_txt
    per_block = 24 * d * d * seq + 4 * seq * seq * d  # linears (qkv, out, 4x MLP) + QK^T and PV
    embed = 2 * cfg["in_channels"] * d * n_img + 2 * cfg["joint_attention_dim"] * d * n_txt
    out = 2 * d * cfg["out_channels"] * n_img
    modulation = (24 * cfg["num_layers"] + 6 * cfg["num_single_layers"]) * d * d
    return blocks * per_block + embed + out + modulation


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device, dtype, n: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 10
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    dt = (time.perf_counter() - t) / iters
    del a, b
    return 2 * n**3 / dt / 1e12


def peak_gb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------------------------------- the model
def build_pipeline(size: str, device, dtype):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    spec = SIZES[size]
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16 directly, on the target device
    try:
        with torch.device(device):
            t = time.perf_counter()
            transformer = FluxTransformer2DModel(**spec["transformer"]).eval()
            log(
                f"  transformer {sum(p.numel() for p in transformer.parameters()) / 1e9:.2f} B params "
                f"({time.perf_counter() - t:.1f} s)"
            )
            t = time.perf_counter()
            t5 = T5EncoderModel(T5Config(**spec["t5"])).eval()
            log(
                f"  T5 encoder  {sum(p.numel() for p in t5.parameters()) / 1e9:.2f} B params "
                f"({time.perf_counter() - t:.1f} s)"
            )
            clip = CLIPTextModel(CLIPTextConfig(**spec["clip"])).eval()
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=16,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.1159,
                scaling_factor=0.3611,
                **spec["vae"],
            ).eval()
    finally:
        torch.set_default_dtype(prev)
    for m in (transformer, t5, clip, vae):
        m.to(device=device, dtype=dtype)
        m.requires_grad_(False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxFillPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=None,
        text_encoder_2=t5,
        tokenizer_2=None,
        transformer=transformer,
    )
    return pipe


def encode_prompt(pipe, device, dtype, time_it: bool):
    """Random token ids through T5 and CLIP (no tokenizers offline). Returns (t5 seq, clip pooled, T5 seconds)."""
    import torch

    g = torch.Generator("cpu").manual_seed(1)
    t5_ids = torch.randint(0, pipe.text_encoder_2.config.vocab_size - 100, (1, T5_LEN), generator=g).to(device)
    clip_ids = torch.randint(0, pipe.text_encoder.config.vocab_size - 2, (1, 77), generator=g).to(device)
    with torch.inference_mode():
        pooled = pipe.text_encoder(clip_ids, output_hidden_states=False).pooler_output.to(dtype)
        seq = pipe.text_encoder_2(t5_ids).last_hidden_state.to(dtype)
        t5_s = None
        if time_it:
            sync(device)
            t = time.perf_counter()
            seq = pipe.text_encoder_2(t5_ids).last_hidden_state.to(dtype)
            sync(device)
            t5_s = time.perf_counter() - t
    return seq, pooled, t5_s


class Workload:
    """Transformer inputs of one job: Fill conditioning (384 ch/token), text, ids, and a 28-step FLUX schedule."""

    def __init__(self, name: str, hw: tuple[int, int], pipe, seq, pooled, device, dtype):
        import torch

        self.name, (self.h, self.w) = name, hw
        lh, lw = self.h // 16, self.w // 16  # packed 2x2 latent grid
        self.n_img = lh * lw
        g = torch.Generator("cpu").manual_seed(2)
        cin = pipe.transformer.config.in_channels
        self.latents0 = torch.randn(1, self.n_img, 64, generator=g).to(device, dtype)
        self.cond = torch.randn(1, self.n_img, cin - 64, generator=g).to(device, dtype)
        self.img_ids = pipe._prepare_latent_image_ids(1, lh, lw, device, dtype)
        self.txt_ids = torch.zeros(seq.shape[1], 3, device=device, dtype=dtype)
        self.seq, self.pooled = seq, pooled
        self.guidance = torch.full((1,), 30.0, device=device, dtype=torch.float32)
        mu = 0.5 + (1.15 - 0.5) * (self.n_img - 256) / (4096 - 256)
        sig = [1 - i / STEPS for i in range(STEPS)] + [0.0]
        self.sigmas = [math.exp(mu) / (math.exp(mu) + (1 / s - 1)) if s > 0 else 0.0 for s in sig]
        self.vae_latents = torch.randn(1, 16, self.h // 8, self.w // 8, generator=g).to(device, dtype)

    def run(self, pipe, start: int, n: int, latents=None):
        import torch

        tr = pipe.transformer
        x = self.latents0 if latents is None else latents
        with torch.inference_mode():
            for i in range(start, start + n):
                s, s_next = self.sigmas[i % STEPS], self.sigmas[i % STEPS + 1]
                t = torch.full((1,), s, device=x.device, dtype=x.dtype)
                ctx = tr.cache_context(self.name) if hasattr(tr, "cache_context") else _null()
                with ctx:
                    v = tr(
                        hidden_states=torch.cat([x, self.cond], dim=2),
                        timestep=t,
                        guidance=self.guidance,
                        pooled_projections=self.pooled,
                        encoder_hidden_states=self.seq,
                        txt_ids=self.txt_ids,
                        img_ids=self.img_ids,
                        return_dict=False,
                    )[0]
                x = x + (s_next - s) * v
        return x

    def decode(self, pipe):
        import torch

        with torch.inference_mode():
            return pipe.vae.decode(self.vae_latents, return_dict=False)[0]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------------------------------- output
class Table:
    COLS = [
        "mode",
        "workload",
        "status",
        "s_per_step",
        "s_per_28_image",
        "speedup_vs_eager",
        "peak_vram_gb",
        "tflops",
        "frac_ceiling",
        "vae_decode_s",
        "warmup_s",
        "note",
    ]

    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.rows = out, meta, []
        out.mkdir(parents=True, exist_ok=True)
        self.flush()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.flush()
        log(self.fmt(row))

    @staticmethod
    def _cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v).replace("|", "/")

    def fmt(self, row: dict) -> str:
        return "| " + " | ".join(self._cell(row.get(c)) for c in self.COLS) + " |"

    def flush(self) -> None:
        m = self.meta
        lines = [
            f"# bench_flux ({m.get('size')}) on {m.get('device_name')}",
            "",
            f"bf16 matmul ceiling ({m.get('matmul_n')}^3): {self._cell(m.get('ceiling_tflops'))} TFLOP/s. "
            f"Timed {m.get('steps_timed')} denoising steps per mode after warm-up, **extrapolated to {STEPS} steps** "
            f"(s_per_28_image = {STEPS} x s_per_step + one VAE decode; text encoding excluded, T5 once: "
            f"{self._cell(m.get('t5_encode_s'))} s). Modes are cumulative (each adds one option to the row above); "
            "speed-up is against eager measured in this run. TFLOP/s uses the analytic FLUX FLOPs per step "
            "(useful work only, LoRA/cache not counted). Random weights: the cache's hit rate is not representative.",
            "",
            "| " + " | ".join(self.COLS) + " |",
            "|" + "---|" * len(self.COLS),
        ]
        lines += [self.fmt(r) for r in self.rows]
        (self.out / "bench_flux.md").write_text("\n".join(lines) + "\n")
        (self.out / "bench_flux.json").write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))


# ------------------------------------------------------------------------------------------------------- modes
def apply_mode(mode: str, pipe, state: dict, args, device) -> str:
    """Add one optimisation on top of the current state. Returns a note; raises _Skip with the reason."""
    import torch

    opt = _optimize()
    tr = pipe.transformer
    if mode == "eager":
        return f"bf16, LoRA r{state['rank']} unfused (peft), SDPA"
    if mode == "fuse_lora":
        return _ok(opt.fuse_active_adapter(pipe, "ace"))
    if mode == "fuse_qkv":
        tr.fuse_qkv_projections()
        return "to_qkv fused"
    if mode == "attention":
        seq = state["workloads"][0].n_img + T5_LEN
        return _ok(opt.set_attention(pipe, args.attention, seq_len=seq))
    if mode == "vae_channels_last":
        pipe.vae.to(memory_format=torch.channels_last)
        return "VAE channels_last"
    if mode == "compile":
        if device.type != "cuda" and not args.compile_cpu:
            raise _Skip("CPU run: inductor's C++ build is slow; --compile-cpu forces it")
        left = args.budget_s - (time.perf_counter() - state["t0"])
        if left < args.compile_reserve_s:
            raise _Skip(f"{left:.0f} s of the time budget left < {args.compile_reserve_s} s reserved for compiling")
        state["compiled"] = True
        state["fullgraph"] = not args.no_fullgraph
        return _ok(opt.compile_transformer(pipe, mode=args.compile_mode, dynamic=False, fullgraph=state["fullgraph"]))
    if mode == "fp8":
        note = _ok(opt.quantize_fp8(tr, backend=args.fp8_backend))
        if state.get("compiled"):
            torch._dynamo.reset()  # new weight types: recompile on the warm-up rather than guard-fail mid-timing
        return note
    if mode == "cache":
        state["full_schedule"] = True
        note = _ok(opt.enable_cache(pipe, args.cache_threshold)) + f"; all {STEPS} steps timed (not extrapolated)"
        if state.get("compiled"):  # the cache hooks break the graph: recompile the blocks without fullgraph
            opt.uncompile_transformer(pipe)
            opt.compile_transformer(pipe, mode=args.compile_mode, dynamic=False, fullgraph=False)
            note += "; blocks recompiled with fullgraph=False"
        return note
    if mode == "offload":
        if device.type != "cuda":
            raise _Skip("model CPU offload needs an accelerator")
        if getattr(tr, "is_cache_enabled", False):
            tr.disable_cache()
        state["full_schedule"] = False
        pipe.enable_model_cpu_offload(device=device)
        state["offload"] = True
        return "enable_model_cpu_offload on the stack above minus cache"
    raise _Skip(f"unknown mode {mode!r}")


def _optimize():
    """bridge_server.engine.optimize, loaded from its file if the package's __init__ needs server-only packages."""
    try:
        from bridge_server.engine import optimize

        return optimize
    except ImportError:
        import importlib.util

        spec = importlib.util.spec_from_file_location("ace_optimize", ROOT / "bridge_server" / "engine" / "optimize.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


class _Skip(Exception):
    pass


def _ok(msg: str) -> str:
    if msg.startswith(("skipped", "failed")):
        raise _Skip(msg)
    return msg.removeprefix("applied: ")


def time_workload(wl: Workload, pipe, state: dict, args, device) -> dict:
    import torch

    tr = pipe.transformer
    offload = state.get("offload")
    reset_peak(device)
    if getattr(tr, "is_cache_enabled", False) and hasattr(tr, "_reset_stateful_cache"):
        tr._reset_stateful_cache()
    if offload:  # a job: text encoders on the GPU, then the transformer is moved in (timed as onload)
        encode_prompt(pipe, device, wl.seq.dtype, time_it=False)
    t = time.perf_counter()
    x = wl.run(pipe, 0, args.warmup)
    wl.decode(pipe)
    sync(device)
    warm = time.perf_counter() - t
    if getattr(tr, "is_cache_enabled", False) and hasattr(tr, "_reset_stateful_cache"):
        tr._reset_stateful_cache()
    n = STEPS if state.get("full_schedule") else args.steps_timed
    sync(device)
    t = time.perf_counter()
    x = wl.run(pipe, 0, n)
    sync(device)
    step_s = (time.perf_counter() - t) / n
    t = time.perf_counter()
    img = wl.decode(pipe)
    sync(device)
    vae_s = time.perf_counter() - t
    finite = bool(torch.isfinite(x).all()) and bool(torch.isfinite(img).all())
    return {
        "s_per_step": step_s,
        "vae_decode_s": vae_s,
        "warmup_s": warm,
        "peak_vram_gb": peak_gb(device),
        "finite": finite,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument(
        "--modes", default=",".join(ALL_MODES), help="comma list, cumulative in this order: " + ",".join(ALL_MODES)
    )
    ap.add_argument("--workloads", default="edit_1440x720,gen_1024")
    ap.add_argument("--steps-timed", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per mode and workload (compile happens here)")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--compile-cpu", action="store_true")
    ap.add_argument("--no-fullgraph", action="store_true", help="compile with fullgraph=False from the start")
    ap.add_argument("--compile-reserve-s", type=float, default=150.0)
    ap.add_argument("--fp8-backend", default="auto", choices=["auto", "torchao", "builtin"])
    ap.add_argument("--cache-threshold", type=float, default=0.08)
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new modes after this many seconds")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    versions = check_packages()
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.size == "full" and device.type != "cuda":
        log("--size full needs a CUDA GPU (use --size tiny on CPU)")
        return 2
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    dtype = torch.bfloat16
    spec = SIZES[args.size]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or '?'})"
    meta = {
        "size": args.size,
        "device_name": dev_name,
        "versions": versions,
        "steps_timed": args.steps_timed,
        "extrapolated_to": STEPS,
        "matmul_n": spec["matmul_n"],
        "argv": sys.argv[1:],
    }
    table = Table(Path(args.out), meta)
    log(
        f"device: {dev_name}; size {args.size}; modes are cumulative; {args.steps_timed} timed steps per mode "
        f"after {args.warmup} warm-up, extrapolated to {STEPS} steps"
    )

    meta["ceiling_tflops"] = matmul_ceiling(device, dtype, spec["matmul_n"])
    log(f"bf16 matmul ceiling ({spec['matmul_n']}^3): {meta['ceiling_tflops']:.1f} TFLOP/s")
    table.flush()

    t = time.perf_counter()
    log("building the pipeline (random weights, bf16, on the device)...")
    pipe = build_pipeline(args.size, device, dtype)
    meta["build_s"] = time.perf_counter() - t
    from lora_keys import convert, make_kohya_lora

    cfg = dict(pipe.transformer.config)
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    t = time.perf_counter()
    kohya = make_kohya_lora(
        width, cfg["num_layers"], cfg["num_single_layers"], spec["lora_rank"], device=device, dtype=dtype
    )
    n_lora = sum(v.numel() for k, v in kohya.items() if not k.endswith(".alpha"))
    sd, which = convert(kohya, width)
    del kohya
    pipe.load_lora_weights(sd, adapter_name="ace")
    pipe.set_adapters(["ace"], adapter_weights=[1.0])
    del sd
    meta["lora"] = f"rank {spec['lora_rank']}, {n_lora / 1e6:.1f} M params, keys via {which}"
    meta["lora_load_s"] = time.perf_counter() - t
    log(f"built in {meta['build_s']:.1f} s; LoRA {meta['lora']} loaded in {meta['lora_load_s']:.1f} s")

    seq, pooled, meta["t5_encode_s"] = encode_prompt(pipe, device, dtype, time_it=True)
    names = [w for w in args.workloads.split(",") if w]
    workloads = [Workload(n, spec["workloads"][n], pipe, seq, pooled, device, dtype) for n in names]
    for wl in workloads:
        wl.flops = flux_flops_per_step(cfg, wl.n_img)
        log(
            f"workload {wl.name}: {wl.w}x{wl.h}, {wl.n_img} image + {T5_LEN} text tokens, "
            f"{wl.flops / 1e12:.4g} TFLOP/step (analytic)"
        )
    meta["workloads"] = {
        wl.name: {"w": wl.w, "h": wl.h, "image_tokens": wl.n_img, "tflop_per_step": wl.flops / 1e12} for wl in workloads
    }
    table.flush()

    state = {"t0": t0, "rank": spec["lora_rank"], "workloads": workloads}
    eager: dict[str, float] = {}
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        elapsed = time.perf_counter() - t0
        log(f"--- mode {mode} (t = {elapsed:.0f} s)")
        try:
            if elapsed > args.budget_s:
                raise _Skip(f"time budget {args.budget_s:.0f} s used up")
            t = time.perf_counter()
            note = apply_mode(mode, pipe, state, args, device)
            apply_s = time.perf_counter() - t
        except _Skip as exc:
            for wl in workloads:
                table.add({"mode": mode, "workload": wl.name, "status": "skipped", "note": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - report and go on with the next mode
            traceback.print_exc()
            for wl in workloads:
                table.add(
                    {
                        "mode": mode,
                        "workload": wl.name,
                        "status": "failed",
                        "note": f"apply: {type(exc).__name__}: {str(exc)[:200]}",
                    }
                )
            _recover(device)
            continue
        for wl in workloads:
            row = {"mode": mode, "workload": wl.name}
            try:
                r = time_workload(wl, pipe, state, args, device)
                row.update(r)
                row["status"] = "ok"
                row["s_per_28_image"] = STEPS * r["s_per_step"] + r["vae_decode_s"]
                row["tflops"] = wl.flops / r["s_per_step"] / 1e12
                row["frac_ceiling"] = row["tflops"] / meta["ceiling_tflops"]
                if mode == "eager":
                    eager[wl.name] = row["s_per_28_image"]
                if wl.name in eager:
                    row["speedup_vs_eager"] = eager[wl.name] / row["s_per_28_image"]
                row["note"] = (
                    note
                    + (f" (apply {apply_s:.1f} s)" if apply_s > 1 else "")
                    + ("" if r["finite"] else "; non-finite output (random weights)")
                )
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                row.update({"status": "failed", "note": f"{type(exc).__name__}: {str(exc)[:200]}"})
                _recover(device)
                if mode == "compile" and state.get("fullgraph"):
                    # e.g. a graph break in the attention kernel: go on with fullgraph=False for the rest
                    opt = _optimize()
                    opt.uncompile_transformer(pipe)
                    opt.compile_transformer(pipe, mode=args.compile_mode, dynamic=False, fullgraph=False)
                    state["fullgraph"] = False
                    note += "; fullgraph=True failed, recompiled with fullgraph=False"
            table.add(row)
        if mode == "compile" and not any(r["status"] == "ok" for r in table.rows if r["mode"] == "compile"):
            _optimize().uncompile_transformer(pipe)  # later modes run eagerly rather than fail the same way
            state["compiled"] = False
    meta["total_s"] = time.perf_counter() - t0
    table.flush()
    log(f"done in {meta['total_s']:.0f} s; table in {Path(args.out) / 'bench_flux.md'} and bench_flux.json")
    return 0


def _recover(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
