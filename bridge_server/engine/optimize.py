"""Speed options for a loaded FLUX(-Fill) diffusers pipeline.

The engine calls `apply_optimizations(pipe, options)` once after loading; every option is applied or skipped with a
reason, and the returned dict (option -> "applied: ..." / "skipped: ...") goes into the engine state and logs.

Options (defaults in DEFAULTS; lossless ones on where they are cheap, lossy ones off):
  fuse_lora          fuse the active LoRA adapter into the base weights (no per-layer LoRA matmuls). Switch adapters
                     with `fuse_active_adapter(pipe, name)` / `unfuse(pipe)`, never by unloading a fused adapter.
  fuse_qkv           one to_qkv matmul instead of to_q/to_k/to_v (lossless; applied after fuse_lora so the LoRA is in it)
  attention          "auto" (fastest kernel measured on this GPU among those installed), or a diffusers backend name
                     ("sdpa"/"native", "_native_cudnn", "_native_flash", "flash", "_flash_3", ...)
  vae_channels_last  channels-last memory format for the VAE convolutions (lossless)
  compile            torch.compile of the transformer's repeated blocks (regional compilation; lossless). Off by
                     default: it costs tens of seconds at the first call of each new canvas size. `compile_mode`
                     ("default", "max-autotune-no-cudagraphs", ...), `compile_dynamic` (None = recompile once, then
                     dynamic shapes; True/False as torch.compile), `compile_fullgraph`.
  fp8                float8 (e4m3) dynamic quantisation of the transformer's linear layers, per-row scales (lossy).
                     torchao when importable, else a built-in torch._scaled_mm path; needs compute capability >= 8.9.
                     `fp8_backend`: "auto" | "torchao" | "builtin". Fuse the LoRA first: a quantised weight cannot be
                     unfused, so switching adapters then needs the base weights reloaded.
  cache              first-block cache (diffusers FirstBlockCacheConfig): a step reuses the residual of the last
                     full step when the first block's output changed by less than `cache_threshold` (lossy; higher =
                     faster and more drift; 0.05-0.12 are the usual values).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bridge_server.engine import diffusers_adapter as dx

DEFAULTS: dict[str, Any] = {
    "fuse_lora": True,
    "fuse_qkv": True,
    "attention": "auto",
    "vae_channels_last": True,
    "compile": False,
    "compile_mode": "default",
    "compile_dynamic": None,
    "compile_fullgraph": True,
    "fp8": False,
    "fp8_backend": "auto",
    "cache": False,
    "cache_threshold": 0.08,
}

# Fastest first where they exist; "auto" measures the installed ones and keeps the quickest.
_ATTENTION_CANDIDATES = ["_flash_3", "flash", "_native_cudnn", "_native_flash", "native"]
_ATTENTION_ALIASES = {"sdpa": "native", "torch": "native", "cudnn": "_native_cudnn", "fa3": "_flash_3", "fa2": "flash"}


def _transformer(pipe):
    return getattr(pipe, "transformer", None)


def _is_cuda(module: torch.nn.Module) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.is_cuda


def _lora_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


# ----------------------------------------------------------------------------------------------- LoRA / QKV fusion
def _qkv_fused(transformer) -> bool:
    return any(getattr(m, "fused_projections", False) for m in transformer.modules())


def fuse_active_adapter(pipe, name: str | None = None, scale: float = 1.0) -> str:
    """Make `name` (default: the active adapter) the only active adapter and fuse it into the base weights.

    Any previously fused adapter is unfused first; fused QKV projections are rebuilt around the new weights.
    In bf16 each fuse/unfuse round trip leaves rounding drift (~1e-2 max abs on weights): reload the base weights
    after many switches if exactness matters.
    """
    tr = _transformer(pipe)
    if tr is None or not _lora_layers(tr):
        return "skipped: no LoRA adapter loaded"
    if name is None:
        active = pipe.get_active_adapters() if hasattr(pipe, "get_active_adapters") else []
        name = active[0] if active else None
    if name is None:
        return "skipped: no active adapter"
    qkv = _qkv_fused(tr) or getattr(tr, "_ace_qkv_wanted", False)
    unfuse(pipe)
    pipe.set_adapters([name], adapter_weights=[scale])
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=[name])
    tr._ace_fused_adapter = name
    if qkv:
        tr.fuse_qkv_projections()
        tr._ace_qkv_wanted = False
    return f"applied: fused adapter {name!r}"


def unfuse(pipe) -> str:
    """Undo `fuse_active_adapter` (no-op when nothing is fused); the adapters stay loaded and unfused.

    QKV fusion is dropped too (a to_qkv layer would bypass the unfused LoRA on to_q/k/v) and comes back with the
    next `fuse_active_adapter`.
    """
    tr = _transformer(pipe)
    if tr is None:
        return "nothing fused"
    if _qkv_fused(tr) and _lora_layers(tr):
        tr.unfuse_qkv_projections()
        tr._ace_qkv_wanted = True
    name = getattr(tr, "_ace_fused_adapter", None)
    if name is None:
        return "nothing fused"
    pipe.unfuse_lora(components=["transformer"])
    tr._ace_fused_adapter = None
    return f"unfused {name!r}"


# ----------------------------------------------------------------------------------------------------- attention
def _backend_usable(name: str) -> str | None:
    """None when the diffusers backend `name` can run here, else why not."""
    return dx.attention_backend_problem(name)


def _time_backend(name: str, shape: tuple[int, int, int, int], device, dtype, iters: int = 5) -> float:
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    backend = AttentionBackendName(name)

    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    for _ in range(2):
        dispatch_attention_fn(q, k, v, backend=backend)
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(iters):
        dispatch_attention_fn(q, k, v, backend=backend)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / iters


def pick_attention_backend(transformer, seq_len: int = 4608) -> tuple[str, str]:
    """Time each installed attention backend at the FLUX shape (B=1, L=seq_len, H, D) and return (name, note)."""
    heads = transformer.config.num_attention_heads
    dim = transformer.config.attention_head_dim
    device = next(transformer.parameters()).device
    dtype = next(transformer.parameters()).dtype
    if dtype not in (torch.float16, torch.bfloat16):
        return "native", "fp32 model: SDPA"
    times, notes = {}, []
    for name in _ATTENTION_CANDIDATES:
        why = _backend_usable(name)
        if why:
            notes.append(f"{name}: {why}")
            continue
        try:
            times[name] = _time_backend(name, (1, seq_len, heads, dim), device, dtype)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
    if not times:
        return "native", "; ".join(notes)
    best = min(times, key=lambda name: times[name])
    timing = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
    return best, f"timed at L={seq_len}: {timing}" + (f"; unavailable: {'; '.join(notes)}" if notes else "")


def set_attention(pipe, choice: str = "auto", seq_len: int = 4608) -> str:
    tr = _transformer(pipe)
    if not hasattr(tr, "set_attention_backend"):
        return "skipped: diffusers without set_attention_backend (SDPA stays)"
    choice = _ATTENTION_ALIASES.get(choice, choice)
    if choice == "auto":
        if not _is_cuda(tr):
            return "skipped: not on CUDA (SDPA stays)"
        choice, note = pick_attention_backend(tr, seq_len)
    else:
        why = _backend_usable(choice)
        if why:
            return f"skipped: {choice}: {why}"
        note = "requested"
    tr.set_attention_backend(choice)
    return f"applied: {choice} ({note})"


# ----------------------------------------------------------------------------------------------------------- fp8
def fp8_supported(device: torch.device | None = None) -> str | None:
    """None when float8 matmuls (torch._scaled_mm) can run on `device`, else why not."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return "needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"GPU compute capability {major}.{minor} < 8.9 has no fp8 tensor cores"
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return "this torch has no float8 / _scaled_mm"
    return None


class Fp8Linear(torch.nn.Module):
    """nn.Linear replacement: e4m3 weight with per-output-row scales, activations quantised per token on the fly."""

    weight_fp8: torch.Tensor  # registered buffers, declared for the type checker
    weight_scale: torch.Tensor

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = w.dtype
        fmax = torch.finfo(torch.float8_e4m3fn).max
        scale = w.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / fmax  # [out, 1]
        self.register_buffer(
            "weight_fp8", (w.float() / scale).to(torch.float8_e4m3fn).t(), persistent=False
        )  # [in, out]
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, out]
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        fmax = torch.finfo(torch.float8_e4m3fn).max
        xs = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / fmax
        xq = (x2.float() / xs).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(xq, self.weight_fp8, scale_a=xs, scale_b=self.weight_scale, out_dtype=self.out_dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def _fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    # only the big matmuls: skip tiny/odd shapes (fp8 GEMMs need dims divisible by 16) and the embedders/proj_out
    if not isinstance(module, torch.nn.Linear):
        return False
    if module.in_features % 16 or module.out_features % 16 or module.in_features < 512:
        return False
    # the 1-token AdaLN modulation linears ("norm*.linear") gain nothing and steer every block: keep them bf16
    return "transformer_blocks" in fqn and ".norm" not in fqn


def quantize_fp8(transformer, backend: str = "auto") -> str:
    why = fp8_supported(next(transformer.parameters()).device)
    if why:
        return f"skipped: {why}"
    if _lora_layers(transformer) and not getattr(transformer, "_ace_fused_adapter", None):
        return "skipped: unfused LoRA layers present (fuse the adapter first)"
    if backend in ("auto", "torchao"):
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

            p = next(transformer.parameters())
            probe = torch.nn.Sequential(torch.nn.Linear(512, 512, device=p.device, dtype=p.dtype))
            quantize_(probe, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
            probe(torch.randn(32, 512, device=p.device, dtype=p.dtype))  # fail here, not mid-job, if it can't run
            quantize_(
                transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_fp8_filter
            )
            return "applied: torchao float8 dynamic activation + weight, per-row"
        except Exception as exc:  # noqa: BLE001
            if backend == "torchao":
                return f"skipped: torchao: {type(exc).__name__}: {str(exc)[:120]}"
            fallback_note = f"torchao unusable ({type(exc).__name__}: {str(exc)[:80]}); "
    else:
        fallback_note = ""
    n = 0
    for fqn, mod in list(transformer.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{fqn}.{child_name}" if fqn else child_name
            if _fp8_filter(child, full):
                setattr(mod, child_name, Fp8Linear(child))
                n += 1
    return f"applied: {fallback_note}built-in fp8 (_scaled_mm, per-row scales) on {n} linear layers"


# ------------------------------------------------------------------------------------------------------- the rest
def enable_cache(pipe, threshold: float) -> str:
    tr = _transformer(pipe)
    try:
        from diffusers import FirstBlockCacheConfig
    except ImportError:
        return "skipped: this diffusers has no FirstBlockCacheConfig"
    if not hasattr(tr, "enable_cache"):
        return "skipped: transformer has no enable_cache"
    if getattr(tr, "is_cache_enabled", False):
        tr.disable_cache()
    tr.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    return f"applied: first-block cache, threshold {threshold}"


def compile_transformer(pipe, mode: str = "default", dynamic: bool | None = None, fullgraph: bool = True) -> str:
    tr = _transformer(pipe)
    if not hasattr(torch, "compile"):
        return "skipped: torch without torch.compile"
    if dx.repeated_blocks(tr) and hasattr(tr, "compile_repeated_blocks"):
        tr.compile_repeated_blocks(mode=mode, dynamic=dynamic, fullgraph=fullgraph)
        how = "regional (repeated blocks)"
    else:
        tr.compile(mode=mode, dynamic=dynamic, fullgraph=fullgraph)
        how = "whole transformer"
    return (
        f"applied: {how}, mode={mode}, dynamic={dynamic}; compiles lazily at the first call of each new size "
        "(warm it up with a dummy step at load)"
    )


def uncompile_transformer(pipe) -> None:
    """Undo `compile_transformer` (modules compiled with Module.compile run eagerly again)."""
    dx.reset_compiled(_transformer(pipe))


def apply_optimizations(pipe, options: dict | None = None) -> dict[str, str]:
    """Apply the options (see module doc; missing keys take DEFAULTS). Returns option -> what happened and why."""
    opts = {**DEFAULTS, **(options or {})}
    out: dict[str, str] = {}
    tr = _transformer(pipe)
    if tr is None:
        return {"all": "skipped: pipeline has no transformer"}

    def step(key: str, fn) -> None:
        try:
            out[key] = fn()
        except Exception as exc:  # noqa: BLE001 - an option that fails must not take the engine down
            out[key] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"

    # order matters: LoRA into the base weights -> QKV concat -> attention -> quantise -> compile -> cache hooks
    if opts["fuse_lora"]:
        step("fuse_lora", lambda: fuse_active_adapter(pipe))
    else:
        out["fuse_lora"] = "off"
    if opts["fuse_qkv"] and _lora_layers(tr) and not getattr(tr, "_ace_fused_adapter", None):
        out["fuse_qkv"] = "skipped: unfused LoRA on to_q/k/v would be bypassed by to_qkv (turn fuse_lora on)"
    elif opts["fuse_qkv"]:
        step("fuse_qkv", lambda: (tr.fuse_qkv_projections(), "applied")[1])
    else:
        out["fuse_qkv"] = "off"
    if opts["attention"] and opts["attention"] != "off":
        step("attention", lambda: set_attention(pipe, str(opts["attention"])))
    else:
        out["attention"] = "off (SDPA)"
    vae = getattr(pipe, "vae", None)
    if opts["vae_channels_last"] and vae is not None:
        step("vae_channels_last", lambda: (vae.to(memory_format=torch.channels_last), "applied")[1])
    else:
        out["vae_channels_last"] = "off"
    if opts["fp8"]:
        step("fp8", lambda: quantize_fp8(tr, opts["fp8_backend"]))
        if out["fp8"].startswith("applied") and _lora_layers(tr):
            out["fp8"] += "; adapter switching now needs the base weights reloaded"
    else:
        out["fp8"] = "off (lossy)"
    if opts["compile"]:
        # the cache hooks call a compiler-disabled function in every block: no full graph with the cache on
        fullgraph = bool(opts["compile_fullgraph"]) and not opts["cache"]
        step("compile", lambda: compile_transformer(pipe, opts["compile_mode"], opts["compile_dynamic"], fullgraph))
    else:
        out["compile"] = "off"
    if opts["cache"]:
        step("cache", lambda: enable_cache(pipe, float(opts["cache_threshold"])))
    else:
        out["cache"] = "off (lossy)"
    return out
