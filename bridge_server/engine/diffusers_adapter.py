"""Every use of diffusers internals goes through this module, and nothing else in the daemon touches them.

The ACE++ pipeline (pipeline.py) drives FLUX's denoising loop itself (diffusers 0.42's FluxFillPipeline cannot take
`masked_image_latents` without an image, re-applies 1 - mask, and has no 448-channel path), so it needs a few
helpers diffusers keeps private or in a pipeline module: latent packing, image ids, the execution device, the
FLUX timestep shift. The model manager needs the attention-backend check, the GGUF checkpoint reader and the
compiled-call reset. Each is wrapped here, once, with the signature we rely on.

`CHECKED_VERSIONS` lists the diffusers releases these wrappers were checked on (tests/unit/test_diffusers_adapter.py
runs each one and fails loudly on any other installed version). To support a new diffusers: run that test and the
engine tests on it, fix what breaks here, add the version. At run time an unknown version is logged once, not
refused, so a user's newer diffusers works where these few signatures did not change.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

# diffusers releases every function below was checked on (signature and behaviour, on the tiny model).
CHECKED_VERSIONS = ("0.42.1",)
_warned = False


class UnknownDiffusersVersion(RuntimeError):
    """The installed diffusers is not one this adapter was checked on."""


def diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def check_version(version: str | None = None, *, strict: bool = False) -> str | None:
    """None when `version` (default: the installed one) was checked, else a message; raises if `strict`."""
    global _warned
    version = version or diffusers_version()
    if version in CHECKED_VERSIONS:
        return None
    message = (
        f"diffusers {version} is not a version ACE Bridge's diffusers adapter was checked on "
        f"({', '.join(CHECKED_VERSIONS)}); if jobs fail, install one of those "
        f"(pip install 'diffusers=={CHECKED_VERSIONS[-1]}')"
    )
    if strict:
        raise UnknownDiffusersVersion(message)
    if not _warned:
        log.warning(message)
        _warned = True
    return message


# ------------------------------------------------------------------------------------------------- the ACE++ loop
def execution_device(pipe: Any) -> Any:
    """The device the pipeline's hooks (model/sequential offload) execute on."""
    return pipe._execution_device


def pack_latents(pipe: Any, latents: Any) -> Any:
    """(1, C, H, W) latents -> (1, H/2 * W/2, C*4) tokens, channels (c, ph, pw)."""
    _, channels, height, width = latents.shape
    return pipe._pack_latents(latents, 1, channels, height, width)


def unpack_latents(pipe: Any, latents: Any, height: int, width: int) -> Any:
    """Tokens -> (1, C, H/8, W/8) latents for a canvas of height x width pixels."""
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def latent_image_ids(pipe: Any, token_rows: int, token_cols: int, device: Any, dtype: Any) -> Any:
    return pipe._prepare_latent_image_ids(1, token_rows, token_cols, device, dtype)


def mask_latents(
    pipe: Any, mask: Any, image: Any, height: int, width: int, dtype: Any, device: Any, generator: Any
) -> tuple[Any, Any]:
    """(packed mask, packed masked-image latents) for one image, through the pipeline's VAE."""
    channels = pipe.vae.config.latent_channels
    return pipe.prepare_mask_latents(mask, image, 1, channels, 1, height, width, dtype, device, generator)


def randn(shape: tuple[int, ...], generator: Any, device: Any, dtype: Any) -> Any:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def flux_timesteps(scheduler: Any, steps: int, image_tokens: int, device: Any) -> tuple[Any, int]:
    """FLUX's sigmas with the dynamic shift for this many image tokens: (timesteps, count)."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps

    config = scheduler.config
    mu = calculate_shift(
        image_tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    sigmas = np.linspace(1.0, 1 / steps, steps).tolist()
    timesteps, total = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
    return timesteps, int(total)


def strength_timesteps(pipe: Any, steps: int, strength: float, device: Any) -> tuple[Any, int]:
    """Image-to-image: the tail of the scheduler's timesteps that `strength` keeps, as FluxFillPipeline's
    `get_timesteps` cuts it (also sets the scheduler's begin index). Call after `flux_timesteps`."""
    timesteps, count = pipe.get_timesteps(steps, strength, device)
    return timesteps, int(count)


def image_latents(pipe: Any, image: Any, generator: Any) -> Any:
    """(1, 3, H, W) image in [-1, 1] -> unpacked, scaled and shifted VAE latents (FluxFillPipeline's own encode)."""
    return pipe._encode_vae_image(image=image.to(pipe.vae.dtype), generator=generator)


def noised_latents(scheduler: Any, latents: Any, timestep: Any, noise: Any) -> Any:
    """The image latents noised to `timestep` (flow matching: sigma * noise + (1 - sigma) * latents)."""
    return scheduler.scale_noise(latents, timestep, noise)


def step_sigma(scheduler: Any) -> Any:
    """The sigma the step just taken started from (for the x0 preview)."""
    return scheduler.sigmas[scheduler.step_index - 1]


def latent_size(height: int, width: int) -> tuple[int, int]:
    return 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)


# ------------------------------------------------------------------------------------------ model manager helpers
def attention_backend_problem(name: str) -> str | None:
    """None when the diffusers attention backend `name` can run here, else why not."""
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements
    except ImportError:
        return "diffusers has no attention dispatcher"
    try:
        backend = AttentionBackendName(name)
    except ValueError:
        return f"unknown backend {name!r}"
    if name.endswith("_hub"):
        return "hub kernels need a download"
    try:
        _check_attention_backend_requirements(backend)
    except Exception as exc:  # noqa: BLE001 - the reason is what we report
        return str(exc).split(". ")[0]
    return None


def repeated_blocks(transformer: Any) -> list[str]:
    """The block classes diffusers marks for regional compilation (empty when it marks none)."""
    return list(getattr(transformer, "_repeated_blocks", None) or [])


def compiled_call(module: Any) -> Any:
    """The callable `Module.compile` stored on `module` (None when it is not compiled); torch 2.x keeps it in
    `_compiled_call_impl` and `Module.__call__` runs it instead of `forward` when set."""
    return getattr(module, "_compiled_call_impl", None)


def set_compiled_call(module: Any, call: Any) -> None:
    """Put `call` where `Module.__call__` looks for the compiled callable (None: eager again)."""
    module._compiled_call_impl = call


def eager_call(module: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `module` uncompiled, with its hooks, whatever is set as its compiled callable."""
    return module._call_impl(*args, **kwargs)


def reset_compiled(module: Any) -> None:
    """Undo `Module.compile` on every submodule (they run eagerly again)."""
    import torch

    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    torch._dynamo.reset()


def read_gguf(path: str) -> dict[str, Any]:
    """A GGUF file's tensors as diffusers' GGUFParameters (quantized ones stay quantized; others plain tensors),
    memory-mapped. diffusers' own `load_gguf_checkpoint` (checked on 0.42) copies every tensor out of the file's
    read-only mapping; a copy-on-write mapping gives writable arrays torch can wrap as they are, so the weights
    stay in the page cache instead of a second copy in host RAM (the same tensors, checked equal in the tests)."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    reader = gguf.GGUFReader(path, mode="c")
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    out: dict[str, Any] = {}
    for tensor in reader.tensors:
        quant = tensor.tensor_type
        if quant not in plain and quant not in SUPPORTED_GGUF_QUANT_TYPES:
            raise ValueError(f"{tensor.name}: GGUF type {quant.name} is not supported by diffusers")
        data = torch.from_numpy(tensor.data)
        out[tensor.name] = data if quant in plain else GGUFParameter(data, quant_type=quant)
    return out


def gguf_dequantize(param: Any) -> Any:
    """A GGUFParameter (or plain tensor) as a float tensor, on whatever device it is (diffusers' torch kernels)."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    if isinstance(param, GGUFParameter):
        return dequantize_gguf_tensor(param)
    return param


def gguf_quant_type(param: Any) -> str | None:
    """The GGML type name of a GGUFParameter (e.g. "Q8_0"); None for plain tensors."""
    kind = getattr(param, "quant_type", None)
    return None if kind is None else getattr(kind, "name", str(kind))


def is_gguf_model(module: Any) -> bool:
    """True when any weight of `module` is still GGUF-quantized (LoRAs cannot be fused into it)."""
    return any(gguf_quant_type(p) is not None for p in module.parameters())
