"""Width-agnostic key converters: ACE++ kohya LoRA -> diffusers, and BFL <-> diffusers FLUX transformer.

Why our own: diffusers 0.42 hard-codes the 3072-wide split of single-block `linear1` in both its kohya LoRA
converter (a bare AssertionError on any other width) and its BFL single-file converter, and has no diffusers -> BFL
direction at all. Every width here is read from the tensors themselves (`linear1` takes `inner_dim` inputs), so the
same code serves the real model and the tiny test model. Only safetensors files are read; nothing is unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from ace_protocol.errors import ErrorCode

from bridge_server.engine.base import EngineError

# ----------------------------------------------------------------------------------------------------------------
# Files


def load_safetensors(path: Path, *, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a .safetensors file on CPU (memory-mapped); anything else is refused with a clear model_missing error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EngineError(
            ErrorCode.MODEL_MISSING,
            f"{what} {path.name}: only .safetensors files are loaded (pickled .bin/.pt/.ckpt are refused for safety)",
        )
    if not path.is_file():
        raise EngineError(ErrorCode.MODEL_MISSING, f"{what} not found at {path}; run `ace-bridge models pull`")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise EngineError(
            ErrorCode.MODEL_MISSING,
            f"{what} {path} is unreadable ({exc}); re-download it with `ace-bridge models pull`",
        ) from exc


# ----------------------------------------------------------------------------------------------------------------
# kohya (ACE++) LoRA -> diffusers/peft


_DOUBLE_TARGETS = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
_SINGLE_TARGETS = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
_KOHYA_KEY = re.compile(
    r"^lora_unet_(?:(?P<kind>double_blocks|single_blocks)_(?P<index>\d+)_(?P<module>[a-z0-9_]+?))"
    r"\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$"
)


def _bad_lora(name: str, message: str) -> EngineError:
    return EngineError(ErrorCode.MODEL_MISSING, f"LoRA {name}: {message}; re-download it with `ace-bridge models pull`")


def kohya_to_diffusers(
    state_dict: dict[str, torch.Tensor],
    *,
    name: str = "lora",
    num_double: int | None = None,
    num_single: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """ACE++ kohya keys -> `transformer.*.lora_A/lora_B.weight`, with alpha / rank folded into lora_A.

    qkv and linear1 are fused in BFL and split in diffusers: lora_A is shared by the parts, lora_B is split by rows
    (q|k|v, and q|k|v|mlp for linear1 where the width is linear1's input size). Blocks beyond `num_double` /
    `num_single` are dropped (test models with fewer blocks); unknown keys are an error, never ignored.
    """
    modules: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _KOHYA_KEY.match(key)
        targets = None
        if match:
            table = _DOUBLE_TARGETS if match["kind"] == "double_blocks" else _SINGLE_TARGETS
            targets = table.get(match["module"])
        if match is None or targets is None:
            raise _bad_lora(name, f"unexpected key {key!r:.80} (not an ACE++ kohya FLUX LoRA)")
        modules.setdefault((match["kind"], int(match["index"]), match["module"]), {})[match["part"]] = tensor
    if not modules:
        raise _bad_lora(name, "the file holds no LoRA weights")

    out: dict[str, torch.Tensor] = {}
    for (kind, index, module), parts in sorted(modules.items()):
        limit = num_double if kind == "double_blocks" else num_single
        if limit is not None and index >= limit:
            continue
        label = f"{kind}_{index}_{module}"
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise _bad_lora(name, f"{label} lacks lora_down or lora_up")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise _bad_lora(name, f"{label} has inconsistent shapes down {tuple(down.shape)} up {tuple(up.shape)}")
        rank = down.shape[0]
        alpha = float(parts["alpha"].float().item()) if "alpha" in parts else float(rank)
        down = down.float() * (alpha / rank)
        up = up.float()
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        prefix = (
            "transformer.transformer_blocks" if kind == "double_blocks" else "transformer.single_transformer_blocks"
        )
        targets = (_DOUBLE_TARGETS if kind == "double_blocks" else _SINGLE_TARGETS)[module]
        if len(targets) == 1:
            rows = [up.shape[0]]
        elif module == "linear1":
            width = down.shape[1]  # linear1 maps the hidden width to q|k|v|mlp
            if up.shape[0] <= 3 * width:
                raise _bad_lora(name, f"{label} up has {up.shape[0]} rows, too few for q|k|v|mlp at width {width}")
            rows = [width, width, width, up.shape[0] - 3 * width]
        else:
            if up.shape[0] % 3:
                raise _bad_lora(name, f"{label} up has {up.shape[0]} rows, not divisible into q|k|v")
            rows = [up.shape[0] // 3] * 3
        for target, up_part in zip(targets, torch.split(up, rows, dim=0)):
            base = f"{prefix}.{index}.{target}"
            out[f"{base}.lora_A.weight"] = down.clone() if len(targets) > 1 else down
            out[f"{base}.lora_B.weight"] = up_part.contiguous()
    if not out:
        raise _bad_lora(name, "none of its blocks exist in this model")
    return out


def check_lora_shapes(converted: dict[str, torch.Tensor], transformer: torch.nn.Module, *, name: str) -> None:
    """Refuse a LoRA made for another model width before peft reports a long size-mismatch traceback."""
    # After the first adapter, peft wraps the Linears; the wrappers keep in_features/out_features.
    linears = {n: m for n, m in transformer.named_modules() if hasattr(m, "in_features") and hasattr(m, "out_features")}
    for key, tensor in converted.items():
        module_name = key.removeprefix("transformer.").rsplit(".lora_", 1)[0]
        module = linears.get(module_name)
        if module is None:
            raise _bad_lora(name, f"targets {module_name}, which this model does not have")
        want = module.in_features if ".lora_A." in key else module.out_features
        got = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
        if want != got:
            raise _bad_lora(name, f"{module_name} expects {want} features but the LoRA has {got} (another model?)")


# ----------------------------------------------------------------------------------------------------------------
# BFL <-> diffusers FLUX transformer


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL final_layer modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


# (BFL suffix, diffusers suffix) for plain renames; weight and bias alike unless noted.
_GLOBAL_RENAMES = [
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
]
_DOUBLE_RENAMES = [
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
]
_DOUBLE_NORMS = [
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
]
_DOUBLE_QKV = [
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
]
_SINGLE_RENAMES = [("modulation.lin", "norm.linear"), ("linear2", "proj_out")]
_SINGLE_NORMS = [("norm.query_norm.scale", "attn.norm_q.weight"), ("norm.key_norm.scale", "attn.norm_k.weight")]
_SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _block_indices(keys: list[str], prefix: str) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in keys if k.startswith(prefix)})


def bfl_to_diffusers(state_dict: dict[str, torch.Tensor], *, name: str = "transformer") -> dict[str, torch.Tensor]:
    """BFL FLUX transformer keys -> diffusers FluxTransformer2DModel keys, any width, any block count."""
    src = {}
    for key, value in state_dict.items():
        for p in _BFL_PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
                break
        src[key] = value
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise EngineError(ErrorCode.MODEL_MISSING, f"{name}: missing tensor {key}; the file is incomplete")
        return src.pop(key)

    keys = list(src)
    for bfl, diff in _GLOBAL_RENAMES:
        for kind in ("weight", "bias"):
            if f"{bfl}.{kind}" in src:
                out[f"{diff}.{kind}"] = take(f"{bfl}.{kind}")
    for kind in ("weight", "bias"):
        out[f"norm_out.linear.{kind}"] = _swap_halves(take(f"final_layer.adaLN_modulation.1.{kind}"))
    for i in _block_indices(keys, "double_blocks."):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for bfl, diff in _DOUBLE_RENAMES:
            for kind in ("weight", "bias"):
                out[f"{d}{diff}.{kind}"] = take(f"{b}{bfl}.{kind}")
        for bfl, diff in _DOUBLE_NORMS:
            out[d + diff] = take(b + bfl)
        for bfl, parts in _DOUBLE_QKV:
            for kind in ("weight", "bias"):
                for part, chunk in zip(parts, take(f"{b}{bfl}.{kind}").chunk(3, dim=0)):
                    out[f"{d}{part}.{kind}"] = chunk.contiguous()
    for i in _block_indices(keys, "single_blocks."):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for bfl, diff in _SINGLE_RENAMES:
            for kind in ("weight", "bias"):
                out[f"{d}{diff}.{kind}"] = take(f"{b}{bfl}.{kind}")
        for bfl, diff in _SINGLE_NORMS:
            out[d + diff] = take(b + bfl)
        weight = take(f"{b}linear1.weight")
        # linear1: hidden width -> q|k|v|mlp (a GGUF-quantized weight holds bytes per row: take its logical shape)
        width = (getattr(weight, "quant_shape", None) or weight.shape)[1]
        rows = [width, width, width, weight.shape[0] - 3 * width]
        for kind, tensor in (("weight", weight), ("bias", take(f"{b}linear1.bias"))):
            for part, chunk in zip(_SINGLE_LINEAR1, torch.split(tensor, rows, dim=0)):
                out[f"{d}{part}.{kind}"] = chunk.contiguous()
    if src:
        leftover = ", ".join(sorted(src)[:5])
        raise EngineError(ErrorCode.MODEL_MISSING, f"{name}: unexpected tensors ({leftover}); not a FLUX transformer")
    return out


def diffusers_to_bfl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `bfl_to_diffusers` (used to write the tiny FFT file in the authors' layout)."""
    src = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    keys = list(src)
    for bfl, diff in _GLOBAL_RENAMES:
        for kind in ("weight", "bias"):
            if f"{diff}.{kind}" in src:
                out[f"{bfl}.{kind}"] = src.pop(f"{diff}.{kind}")
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(src.pop(f"norm_out.linear.{kind}"))
    for i in _block_indices(keys, "transformer_blocks."):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for bfl, diff in _DOUBLE_RENAMES:
            for kind in ("weight", "bias"):
                out[f"{b}{bfl}.{kind}"] = src.pop(f"{d}{diff}.{kind}")
        for bfl, diff in _DOUBLE_NORMS:
            out[b + bfl] = src.pop(d + diff)
        for bfl, parts in _DOUBLE_QKV:
            for kind in ("weight", "bias"):
                out[f"{b}{bfl}.{kind}"] = torch.cat([src.pop(f"{d}{p}.{kind}") for p in parts], dim=0)
    for i in _block_indices(keys, "single_transformer_blocks."):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for bfl, diff in _SINGLE_RENAMES:
            for kind in ("weight", "bias"):
                out[f"{b}{bfl}.{kind}"] = src.pop(f"{d}{diff}.{kind}")
        for bfl, diff in _SINGLE_NORMS:
            out[b + bfl] = src.pop(d + diff)
        for kind in ("weight", "bias"):
            out[f"{b}linear1.{kind}"] = torch.cat([src.pop(f"{d}{p}.{kind}") for p in _SINGLE_LINEAR1], dim=0)
    if src:
        raise ValueError(f"unconverted diffusers keys: {sorted(src)[:5]}")
    return out
