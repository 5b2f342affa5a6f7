"""Random ACE++-format (kohya/ComfyUI key) FLUX LoRAs and a width-agnostic kohya -> diffusers key converter.

Key set (the kohya names in the published ACE++ ComfyUI LoRA files):
  lora_unet_double_blocks_{i}_{img,txt}_{attn_qkv,attn_proj,mlp_0,mlp_2,mod_lin}.{lora_down.weight,lora_up.weight,alpha}
  lora_unet_single_blocks_{i}_{linear1,linear2,modulation_lin}.{lora_down.weight,lora_up.weight,alpha}
"""

from __future__ import annotations

import torch

# BFL module suffix -> (diffusers module names, split of the output rows; None = one module, whole)
_DOUBLE = {
    "img_attn_qkv": (["attn.to_q", "attn.to_k", "attn.to_v"], "qkv"),
    "img_attn_proj": (["attn.to_out.0"], None),
    "img_mlp_0": (["ff.net.0.proj"], None),
    "img_mlp_2": (["ff.net.2"], None),
    "img_mod_lin": (["norm1.linear"], None),
    "txt_attn_qkv": (["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], "qkv"),
    "txt_attn_proj": (["attn.to_add_out"], None),
    "txt_mlp_0": (["ff_context.net.0.proj"], None),
    "txt_mlp_2": (["ff_context.net.2"], None),
    "txt_mod_lin": (["norm1_context.linear"], None),
}
_SINGLE = {
    "linear1": (["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "qkvm"),
    "linear2": (["proj_out"], None),
    "modulation_lin": (["norm.linear"], None),
}


def module_shapes(width: int, mlp_ratio: float = 4.0) -> dict[str, tuple[int, int]]:
    """(in, out) of each BFL LoRA target for a FLUX of hidden size `width`."""
    d, m = width, int(width * mlp_ratio)
    return {
        "attn_qkv": (d, 3 * d),
        "attn_proj": (d, d),
        "mlp_0": (d, m),
        "mlp_2": (m, d),
        "mod_lin": (d, 6 * d),
        "linear1": (d, 3 * d + m),
        "linear2": (d + m, d),
        "modulation_lin": (d, 3 * d),
    }


def make_kohya_lora(
    width: int,
    n_double: int,
    n_single: int,
    rank: int,
    device="cpu",
    dtype=torch.bfloat16,
    std: float = 1e-3,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random LoRA with the full ACE++ key set (alpha = rank), generated directly on `device`."""
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = module_shapes(width)
    sd: dict[str, torch.Tensor] = {}

    def add(name: str, kind: str) -> None:
        fin, fout = shapes[kind]
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, fin, generator=g, device=device, dtype=dtype) * std
        sd[f"{name}.lora_up.weight"] = torch.randn(fout, rank, generator=g, device=device, dtype=dtype) * std
        sd[f"{name}.alpha"] = torch.tensor(float(rank), device=device, dtype=dtype)

    for i in range(n_double):
        for stream in ("img", "txt"):
            for kind in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin"):
                add(f"lora_unet_double_blocks_{i}_{stream}_{kind}", kind)
    for i in range(n_single):
        for kind in ("linear1", "linear2", "modulation_lin"):
            add(f"lora_unet_single_blocks_{i}_{kind}", kind)
    return sd


def kohya_to_diffusers(sd: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """kohya FLUX LoRA -> diffusers/peft keys (`transformer.<module>.lora_A/B.weight`), alpha/rank folded into A."""
    out: dict[str, torch.Tensor] = {}
    mlp = 4 * width
    for key in sd:
        if not key.endswith(".lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        down, up = sd[key], sd[f"{base}.lora_up.weight"]
        rank = down.shape[0]
        alpha = sd.get(f"{base}.alpha")
        scale = float(alpha) / rank if alpha is not None else 1.0
        name = base[len("lora_unet_") :]
        if name.startswith("double_blocks_"):
            rest = name[len("double_blocks_") :]
            idx, suffix = rest.split("_", 1)
            targets, split = _DOUBLE[suffix]
            prefix = f"transformer.transformer_blocks.{idx}."
        elif name.startswith("single_blocks_"):
            rest = name[len("single_blocks_") :]
            idx, suffix = rest.split("_", 1)
            targets, split = _SINGLE[suffix]
            prefix = f"transformer.single_transformer_blocks.{idx}."
        else:
            raise KeyError(f"not a FLUX block key: {key}")
        sizes = {None: [up.shape[0]], "qkv": [width] * 3, "qkvm": [width] * 3 + [mlp]}[split]
        if sum(sizes) != up.shape[0]:
            raise ValueError(f"{key}: up has {up.shape[0]} rows, expected {sum(sizes)} for width {width}")
        for target, up_part in zip(targets, torch.split(up, sizes, dim=0), strict=True):
            out[f"{prefix}{target}.lora_A.weight"] = down * scale
            out[f"{prefix}{target}.lora_B.weight"] = up_part.contiguous()
    return out


def convert(sd: dict[str, torch.Tensor], width: int) -> tuple[dict[str, torch.Tensor], str]:
    """Use the engine's converter (bridge_server/engine/convert.py) when it imports, else the one above.
    Returns (state dict, which converter)."""
    dtype = next(iter(sd.values())).dtype
    try:
        from bridge_server.engine.convert import kohya_to_diffusers as engine_kohya_to_diffusers
    except Exception as exc:  # noqa: BLE001 - absent or its imports missing: fall back to ours
        why = f"{type(exc).__name__}: {str(exc)[:60]}"
    else:
        try:
            return engine_kohya_to_diffusers(sd, dtype=dtype), "bridge_server.engine.convert.kohya_to_diffusers"
        except Exception as exc:  # noqa: BLE001
            why = f"{type(exc).__name__}: {str(exc)[:60]}"
    return kohya_to_diffusers(sd, width), f"bench/gpu/lora_keys.kohya_to_diffusers (engine converter: {why})"
