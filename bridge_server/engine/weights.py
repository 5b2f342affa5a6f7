"""Transformer weights from the files people have: a diffusers folder, a single .safetensors file (the authors' BFL
layout or diffusers keys; bf16, fp16, fp32 or fp8), or a GGUF file (ComfyUI-GGUF's BFL layout or ours).

GGUF goes through diffusers' real loading path (`from_single_file` + `GGUFQuantizationConfig`: GGUFLinear layers that
dequantize at each forward, on the CPU too). BFL-keyed files are converted with our width-agnostic converter
(convert.py) before diffusers sees them, because diffusers' own converter hard-codes FLUX's 3072 width in the
single-block split (shared/reference/consumer_gpus.md); at full width both give the same tensors. The config comes
from a local folder (the installed base model, or the small configs shipped in bridge_server/models/configs), so
nothing is fetched from the gated hub repo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ace_protocol.errors import ErrorCode

from bridge_server.engine import diffusers_adapter as dx
from bridge_server.engine.base import EngineSetupError

BFL_MARKERS = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight")


def is_bfl(keys: Any) -> bool:
    keys = list(keys)
    return any(k.endswith(m) for k in keys for m in BFL_MARKERS)


def _wrong_channels(path: Path, got: int | None, want: int | None, what: str) -> EngineSetupError:
    return EngineSetupError(
        "wrong_file",
        ErrorCode.MODEL_MISSING,
        f"{path} takes {got} input channels, not {want}: it is not the {what} (384: FLUX.1-Fill, 448: ACE++ FFT, "
        "64: FLUX.1-dev). Run `ace-bridge models find` to see what each file really is.",
    )


def _input_channels(state: dict[str, Any]) -> int | None:
    weight = state.get("x_embedder.weight")
    if weight is None:
        return None
    shape = getattr(weight, "quant_shape", None) or tuple(weight.shape)
    return int(shape[1])


def load_gguf_transformer(
    path: Path, config_dir: Path, *, dtype: Any, in_channels: int | None = None, what: str = "transformer"
) -> Any:
    """A FluxTransformer2DModel whose Linear weights stay GGUF-quantized (dequantized per layer at each forward)."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    from bridge_server.engine.convert import bfl_to_diffusers

    try:
        checkpoint = dx.read_gguf(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a model problem the user can fix
        raise EngineSetupError(
            "wrong_file", ErrorCode.MODEL_MISSING, f"{what} {path} is not a readable GGUF file ({exc})"
        ) from exc
    if is_bfl(checkpoint):
        checkpoint = bfl_to_diffusers(checkpoint, name=str(path))
    got = _input_channels(checkpoint)
    if got is None:
        raise EngineSetupError(
            "wrong_file", ErrorCode.MODEL_MISSING, f"{path} is not a FLUX transformer (no img_in / x_embedder)"
        )
    if in_channels is not None and got != in_channels:
        raise _wrong_channels(path, got, in_channels, what)
    return FluxTransformer2DModel.from_single_file(
        checkpoint,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        config=str(config_dir),
        subfolder="transformer",
        in_channels=got,
        torch_dtype=dtype,
        local_files_only=True,
    ).eval()


def load_single_file_transformer(
    path: Path,
    config_dir: Path,
    *,
    dtype: Any,
    in_channels: int | None = None,
    keep_fp8: bool = False,
    what: str = "transformer",
) -> Any:
    """A FluxTransformer2DModel from one .safetensors file (BFL or diffusers keys). `keep_fp8`: weights stored in
    float8 stay float8 and are upcast per layer at each forward (diffusers layerwise casting)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from bridge_server.engine.convert import bfl_to_diffusers, load_safetensors

    state = load_safetensors(path, what=what)
    if is_bfl(state):
        state = bfl_to_diffusers(state, name=what)
    got = _input_channels(state)
    if got is None or (in_channels is not None and got != in_channels):
        raise _wrong_channels(path, got, in_channels, what)
    config = dict(FluxTransformer2DModel.load_config(str(Path(config_dir) / "transformer")))
    config["in_channels"] = got
    fp8 = keep_fp8 and any(v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for v in state.values())
    storage = next((v.dtype for v in state.values() if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)), None)
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    if fp8:
        # big matrices stay fp8; norms/biases in the compute dtype (diffusers skips those when casting layerwise)
        state = {k: (v if v.dtype == storage else v.to(dtype)) for k, v in state.items()}
    else:
        state = {k: v.to(dtype) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise EngineSetupError(
            "wrong_file", ErrorCode.MODEL_MISSING, f"{path} does not fit the model config ({str(exc)[:300]})"
        ) from exc
    if fp8:
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    return model.eval()


def cast_fp8(model: Any, dtype: Any) -> str:
    """fp8 weight-only: Linear/conv weights stored as float8_e4m3fn, upcast to `dtype` per layer at each forward
    (diffusers layerwise casting; works on any CUDA GPU and on the CPU, no fp8 tensor cores needed)."""
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        return "skipped: this torch has no float8 dtype"
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    return "applied: fp8 (e4m3) weight storage, upcast per layer"
