"""The ACE++ pipeline, pure: a recipe plan and loaded components in, an RGB canvas out. No loading, no lifecycle.

Stages of one image (`generate`): 1. text (through the `encode` the model manager gives: its placement and cache;
FFT: cleaned prompt, the authors' 14 added T5 identifiers, see fft_text.py) 2. latents and noise, each as its authors
draw them from the seed: LoRA/base tasks like ACE++'s diffusers script (ONE CPU generator, the VAE samples first,
then the noise); FFT tasks like its scepter code (the noise FIRST, bf16, on the GPU's generator, CPU only without a
GPU) 3. our own denoising loop (progress and cancellation every step, optional x0 previews) 4. decode.

Why our own loop: diffusers 0.42's FluxFillPipeline cannot take `masked_image_latents` without an image
(diffusers PR #12627), re-applies (1 - mask) to the image (breaking repainting scales < 1), VAE-decodes even after
an interrupt, and has no way to feed the FFT model's 448 channels. The loop is built from the pipeline's own
helpers, reached only through diffusers_adapter.py, and serves both widths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge_server.engine import diffusers_adapter as dx
from bridge_server.engine import recipes
from bridge_server.engine.base import JobCancelled, PreviewCallback, StepCallback

# Live previews: the flow-matching x0 estimate, area-pooled in latent space so the decode is at most this long.
PREVIEW_MAX_SIDE = 256

# encode(prompt, fft) -> (T5 sequence embeddings, CLIP pooled, text ids), on the execution device
TextEncoder = Callable[[str, bool], tuple[Any, Any, Any]]


@dataclass
class Components:
    """What one job runs on, as the model manager prepared it."""

    pipe: Any  # FluxFillPipeline: VAE, scheduler, text encoders, the LoRA-carrying Fill transformer
    transformer: Any  # the transformer this job runs: pipe.transformer, or the FFT model
    device: Any  # where the denoising runs
    dtype: Any
    encode: TextEncoder
    fft: bool = False
    preview_every: int = 0  # 0: no previews (also when offloading would make a preview decode cost a step)


def generate(
    c: Components,
    plan: recipes.Plan,
    *,
    seed: int,
    steps: int,
    guidance: float,
    on_step: StepCallback,
    is_cancelled: Callable[[], bool],
    on_preview: PreviewCallback | None = None,
) -> np.ndarray:
    """The canvas (plan.height x plan.width) as uint8 RGB HxWx3. Raises JobCancelled between steps."""
    import torch

    pipe, transformer, device, dtype, fft = c.pipe, c.transformer, c.device, c.dtype, c.fft
    height, width = plan.height, plan.width
    # no_grad, not inference_mode: offload hooks move weights inside this block, and inference tensors would later
    # refuse peft's requires_grad toggling when adapters are switched.
    with torch.no_grad():
        # 1. Text: CLIP pooled + T5 sequence ({image} is one added T5 token).
        prompt_embeds, pooled, text_ids = c.encode(plan.prompt, fft)
        latent_c = pipe.vae.config.latent_channels
        lh, lw = dx.latent_size(height, width)
        if fft:
            # 2a. FFT: the noise FIRST, as the authors' scepter code draws it (LatentDiffusionACEPlus.noise_sample):
            #     a fresh generator on the GPU seeded with the seed, bf16, (1, 16, 2*ceil(h/16), 2*ceil(w/16)); a CPU
            #     generator only where there is no GPU. The same generator then samples the VAE latents (theirs use
            #     the unseeded global RNG there; ours stay reproducible).
            generator = noise_generator(device, seed)
            noise = torch.randn(
                (1, latent_c, lh, lw), generator=generator, device=generator.device, dtype=torch.bfloat16
            ).to(device=device, dtype=dtype)
        else:
            # LoRA/base: ONE CPU generator, the VAE samples first and the noise after (their diffusers path).
            generator = torch.Generator("cpu").manual_seed(seed)
        # 2. Conditioning latents from OUR canvas (repainting scale already applied).
        mask = torch.from_numpy(plan.mask)[None, None].to(device=device, dtype=dtype)
        mask_packed, edit_packed = dx.mask_latents(
            pipe, mask, to_nchw(plan.canvas, device, dtype), height, width, dtype, device, generator
        )
        if fft:
            _, change_packed = dx.mask_latents(
                pipe,
                mask,
                to_nchw(_present(plan.change, "change image"), device, dtype),
                height,
                width,
                dtype,
                device,
                generator,
            )
            cond = torch.cat([edit_packed, change_packed, mask_packed], dim=-1)  # 64 + 64 + 256
        else:
            cond = torch.cat([edit_packed, mask_packed], dim=-1)  # 64 + 256
            # 3. LoRA/base noise: the same CPU generator after the VAE sampling (their diffusers order).
            noise = dx.randn((1, latent_c, lh, lw), generator, device, dtype)
        # Packed 2x2 per token, channels (c, ph, pw): the authors' 'c (h ph) (w pw) -> (h w) (c ph pw)'.
        latents = dx.pack_latents(pipe, noise)
        image_ids = dx.latent_image_ids(pipe, lh // 2, lw // 2, device, dtype)
        # 4. Timesteps: FLUX dynamic shift on the canvas's token count.
        sched = pipe.scheduler
        timesteps, total = dx.flux_timesteps(sched, steps, (lh // 2) * (lw // 2), device)
        strength = float(plan.strength)
        if strength < 1.0 and plan.source is not None:
            # 4b. Image-to-image (FluxFillPipeline's `strength`): keep the last steps*strength timesteps and start
            #     from the source canvas's latents noised to the first of them. The VAE draws from the same
            #     generator AFTER the noise, so strength 1.0 (this block skipped) stays bit for bit as before.
            timesteps, total = dx.strength_timesteps(pipe, steps, strength, device)
            init = dx.image_latents(pipe, to_nchw(plan.source, device, dtype), generator).to(dtype)
            init = dx.pack_latents(pipe, init.to(device))
            latents = dx.noised_latents(sched, init, timesteps[:1], latents)
        guidance_t = (
            torch.full([1], guidance, device=device, dtype=torch.float32)
            if transformer.config.guidance_embeds
            else None
        )
        every = c.preview_every if on_preview is not None else 0
        # 5. Denoising loop: progress every step, cancellation checked before every step and before decode.
        #    A preview (when asked for) comes before the step's progress, so the caller can attach it.
        for i, t in enumerate(timesteps):
            if is_cancelled():
                raise JobCancelled()
            noise_pred = transformer(
                hidden_states=torch.cat([latents, cond], dim=2),
                timestep=(t.expand(1).to(latents.dtype)) / 1000,
                guidance=guidance_t,
                pooled_projections=pooled,
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
            before = latents
            latents = sched.step(noise_pred, t, latents, return_dict=False)[0]
            if every and on_preview is not None and (i + 1) % every == 0 and i + 1 < total:
                on_preview(i + 1, preview(pipe, plan, before, noise_pred, dx.step_sigma(sched)))
            on_step(i + 1, total)
        if is_cancelled():
            raise JobCancelled()
        # 6. Decode.
        latents = dx.unpack_latents(pipe, latents, height, width)
        return decode(pipe, latents)


def decode(pipe: Any, latents: Any) -> np.ndarray:
    """Unpacked latents -> uint8 RGB HxWx3."""
    import torch

    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    rgb = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).cpu().numpy()


def preview(pipe: Any, plan: recipes.Plan, latents: Any, velocity: Any, sigma: Any) -> np.ndarray:
    """Where the image is heading: x0 = x_t - sigma * v (flow matching), area-pooled in latent space so the
    decoded image is at most PREVIEW_MAX_SIDE px long (about 1/16 of a full decode at 1024 px), cropped to the
    result's part of the canvas like `Plan.postprocess` (reference columns dropped). Uint8 RGB HxWx3."""
    import torch.nn.functional as F

    height, width = plan.height, plan.width
    x0 = latents.float() - sigma.to(latents.device).float() * velocity.float()
    x0 = dx.unpack_latents(pipe, x0, height, width)
    lh, lw = x0.shape[-2:]
    factor = max(1, -(-max(lh, lw) * pipe.vae_scale_factor // PREVIEW_MAX_SIDE))
    if factor > 1:
        x0 = F.interpolate(x0, size=(-(-lh // factor), -(-lw // factor)), mode="area")
    rgb = decode(pipe, x0)
    ph, pw = rgb.shape[:2]
    x, y, w, h = plan.crop
    x0c, x1c = round(x * pw / width), round((x + w) * pw / width)
    y0c, y1c = round(y * ph / height), round((y + h) * ph / height)
    part = rgb[y0c : max(y1c, y0c + 1), x0c : max(x1c, x0c + 1)]
    return np.ascontiguousarray(part)


def _present(array: np.ndarray | None, what: str) -> np.ndarray:
    if array is None:  # the FFT recipes always make one; a plan without it is a bug in recipes.py
        raise AssertionError(f"the FFT plan has no {what}")
    return array


def to_nchw(array: np.ndarray, device: Any, dtype: Any) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def noise_generator(device: Any, seed: int) -> Any:
    """The FFT noise generator as the authors make it: on the GPU that runs the job, seeded with the job's seed;
    on the CPU only where there is no GPU (a CPU and a CUDA generator give different numbers for one seed)."""
    import torch

    where = torch.device(device)
    if where.type != "cuda":
        where = torch.device("cpu")
    return torch.Generator(device=where).manual_seed(int(seed))
