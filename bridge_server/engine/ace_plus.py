"""ACE++ on diffusers: FluxFillPipeline components, three named LoRA adapters, the optional FFT transformer.

Stages of one job (`run`): 1. plan (pure recipe) 2. load on first use 3. pick transformer + adapter
4. encode prompt (FFT: cleaned, with the authors' 14 added T5 identifiers; see fft_text.py) 5. latents and noise,
each as its authors draw them from the seed: LoRA/base tasks like ACE++'s diffusers script (ONE CPU generator, the
VAE samples first, then the noise); FFT tasks like its scepter code (the noise FIRST, bf16, on the GPU's generator,
CPU only without a GPU) 6. our own denoising loop (progress and cancellation every step) 7. decode 8. crop back.

Why our own loop: diffusers 0.42's FluxFillPipeline cannot take `masked_image_latents` without an image
(diffusers PR #12627), re-applies (1 - mask) to the image (breaking repainting scales < 1), VAE-decodes even after
an interrupt, and has no way to feed the FFT model's 448 channels. The loop below is built from the pipeline's
own helpers (encode_prompt, prepare_mask_latents, retrieve_timesteps, scheduler.step) and serves both widths.

Memory modes (`memory_mode`), `auto` picks from free VRAM at load time:
    gpu                 whole pipeline on the GPU        free VRAM >= 40 GiB  (bf16 weights ~34 GB + activations)
    model-offload       one component at a time on GPU  free VRAM >= 26 GiB  (the 23.8 GB transformer must fit)
    sequential-offload  layer by layer (slow)           below that
A CUDA OOM fails only that job (out_of_memory with a hint); in `auto` the next job loads one mode lower.
The FFT transformer (instruct) lives on the CPU and is moved to the GPU only for instruct jobs (gpu and
model-offload), or is layer-offloaded (sequential-offload).

Smaller weights (optional extras, applied through `optimizations` -> bridge_server/engine/optimize.py):
    fp8 (torchao, or torch._scaled_mm)  transformer ~12 GB instead of 23.8; needs compute capability >= 8.9;
                                        lossy (users report artefacts with a naive fp8 cast of the FFT, ACE_plus #93)
    nf4 (bitsandbytes, `serve --quantize nf4`)  ~7 GB; slower matmuls and the largest quality loss; CUDA only
Both bake the weights: a LoRA must be fused first, and switching adapters then means reloading the base weights.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import random
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ace_protocol.errors import ErrorCode
from ace_protocol.tasks import TASKS

from bridge_server.engine import recipes
from bridge_server.engine.base import EngineError, EngineJob, EngineResult, JobCancelled, PreviewCallback, StepCallback
from bridge_server.models.layout import ModelLayout
from bridge_server.models.pull import read_download_progress

log = logging.getLogger(__name__)


def _task_default(task: str, name: str, fallback: Any) -> Any:
    """A parameter's default from the task table (e.g. guidance 50 for ACE++ tasks, 30 for plain Fill)."""
    spec = TASKS.get(task)
    param = spec.param(name) if spec is not None else None
    return fallback if param is None else param.default


MEMORY_MODES = ("auto", "gpu", "model-offload", "sequential-offload")
GPU_MODE_MIN_FREE_GIB = 40.0
MODEL_OFFLOAD_MIN_FREE_GIB = 26.0
# Without CUDA, refuse transformers above this many parameters (FLUX.1 has 11.9 B; the 1+1-block test model 0.55 B).
CPU_MAX_TRANSFORMER_PARAMS = 4e9
IMAGE_TOKEN = "{image}"
ALL_TASKS = ("instruct", "local_edit", "reference_edit", "subject", "portrait", "generate", "inpaint")
TASK_NEEDS = {  # model pieces a task needs besides the base model
    "instruct": "fft",
    "local_edit": "local",
    "reference_edit": "subject",
    "subject": "subject",
    "portrait": "portrait",
    "generate": None,
    "inpaint": None,
}
# Live previews: the flow-matching x0 estimate, area-pooled in latent space so the decode is at most this long.
PREVIEW_MAX_SIDE = 256
# Modes where the VAE stays resident; with offload a preview decode would swap the transformer out and back.
PREVIEW_MODES = ("gpu", "cpu")
PULL_HINT = "run `ace-bridge models pull` (add --fft for instruct), or point `serve --model` at a model folder"


def estimate_transformer_params(config: dict[str, Any]) -> float:
    """Rough parameter count from a FluxTransformer2DModel config (double block ~36 d^2, single ~15 d^2)."""
    d = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
    return float(config.get("num_layers", 19)) * 36 * d * d + float(config.get("num_single_layers", 38)) * 15 * d * d


class AcePlusEngine:
    """The Engine protocol on ACE++ (see bridge_server/engine/base.py). One thread calls `run`."""

    name = "ace_plus"

    def __init__(
        self,
        model_root: Path,
        *,
        device: str = "auto",
        dtype: Any = None,
        memory_mode: str = "auto",
        idle_unload_s: float | None = 600,
        max_tokens_limit: int = 16384,
        t5_max_length: int = 512,
        optimizations: dict[str, Any] | None = None,
        quantize: str | None = None,
        preview_every: int = 4,
    ) -> None:
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {memory_mode!r}")
        if quantize not in (None, "nf4"):
            raise ValueError(f"quantize must be None or 'nf4', got {quantize!r}")
        if quantize == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
            # Fail at start, not at the first job: the user is at the terminal now.
            raise ValueError("--quantize nf4 needs bitsandbytes: pip install 'ace-bridge[nf4]' (keep your torch)")
        self.quantize = quantize
        self.layout = ModelLayout(Path(model_root))
        self._device_request = device
        self._dtype_request = dtype
        self._memory_request = memory_mode
        self._auto_floor: str | None = None  # after an OOM in auto mode: never go above this mode again
        self.idle_unload_s = idle_unload_s
        self.max_tokens_limit = max_tokens_limit
        self.t5_max_length = t5_max_length
        self.optimizations = optimizations
        self.preview_every = max(0, int(preview_every))  # 0: never; a preview every N steps, never on the last
        self._lock = threading.RLock()
        self._state = "unloaded"
        self._error: str | None = None
        self._pipe: Any = None
        self._fft: Any = None
        self._fft_tokenizer: Any = None  # T5 tokenizer + the FFT model's 14 identifiers (fft_text.py)
        self._adapters: list[str] = []
        self._device: str | None = None
        self._memory_mode: str | None = None
        self._timer: threading.Timer | None = None
        self._optimized: dict[str, str] = {}
        self._last_used = time.monotonic()

    # ------------------------------------------------------------------------------------------------------------
    # What is installed

    def _installed(self, piece: str | None) -> bool:
        if piece is None:
            return True
        if piece == "fft":
            return self.layout.has_fft()
        return self.layout.lora(piece).is_file()

    def set_memory_mode(self, mode: str) -> None:
        """Change the memory mode; the model is unloaded now and loads in the new mode at the next job."""
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
        with self._lock:
            self._memory_request = mode
            self._auto_floor = None
        self.unload()

    def available_tasks(self) -> list[str]:
        if not self.layout.has_base():
            return []
        return [t for t in ALL_TASKS if self._installed(TASK_NEEDS[t])]

    def _missing_message(self, task: str) -> str:
        if not self.layout.has_base():
            return f"the base model is not installed at {self.layout.base}; {PULL_HINT}"
        piece = TASK_NEEDS[task]
        path = self.layout.fft if piece == "fft" else self.layout.lora(piece)
        what = "the ACE++ FFT model (23.8 GB)" if piece == "fft" else f"the ACE++ {piece} LoRA"
        pull = "`ace-bridge models pull --fft`" if piece == "fft" else "`ace-bridge models pull`"
        return f"task '{task}' needs {what} at {path}; run {pull}"

    def state(self) -> dict[str, Any]:
        state = self._state
        download = None
        if state in ("unloaded", "missing") and not self.layout.has_base():
            download = read_download_progress(self.layout.root)
            state = "downloading" if download else "missing"
        out: dict[str, Any] = {
            "state": state,
            "model": str(self.layout.root),
            "tiny": (self.layout.root / "TINY_MODEL.json").is_file(),
            "adapters": list(self._adapters),
            "fft": self.layout.has_fft(),
            "fft_loaded": self._fft is not None,
            "device": self._device,
            "memory_mode": self._memory_mode or self._memory_request,
            "memory_mode_requested": self._memory_request,
            "vram": _vram(),
            "tasks": self.available_tasks(),
        }
        if self._optimized:
            out["optimizations"] = dict(self._optimized)
        if download:
            out["download"] = download
        if self._error:
            out["error"] = self._error
        return out

    # ------------------------------------------------------------------------------------------------------------
    # Loading

    def _resolve_device(self) -> str:
        import torch

        if self._device_request != "auto":
            return self._device_request
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _resolve_dtype(self, device: str):
        import torch

        if self._dtype_request is None:
            return torch.bfloat16 if device.startswith("cuda") else torch.float32
        if isinstance(self._dtype_request, str):
            return getattr(torch, self._dtype_request)
        return self._dtype_request

    def _resolve_memory_mode(self, device: str) -> str:
        if not device.startswith("cuda"):
            return "cpu"
        if self._memory_request != "auto":
            return self._memory_request
        vram = _vram() or {}
        free = vram.get("free_gib", 0.0)
        mode = (
            "gpu"
            if free >= GPU_MODE_MIN_FREE_GIB
            else "model-offload"
            if free >= MODEL_OFFLOAD_MIN_FREE_GIB
            else "sequential-offload"
        )
        if self._auto_floor and MEMORY_MODES.index(mode) < MEMORY_MODES.index(self._auto_floor):
            mode = self._auto_floor
        return mode

    def _check_size(self, device: str) -> None:
        """Refuse the real-size model without a GPU before reading 34 GB of weights."""
        config_path = self.layout.base / "transformer" / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        params = estimate_transformer_params(config)
        if not device.startswith("cuda") and params > CPU_MAX_TRANSFORMER_PARAMS:
            raise EngineError(
                ErrorCode.MODEL_MISSING,
                f"no CUDA GPU found, and this model ({params / 1e9:.1f} B transformer parameters, about 34 GB of "
                "bf16 weights with the text encoders) cannot run on the CPU in any useful time or memory. Run the "
                "daemon on a machine with an NVIDIA GPU (24 GB+ with offload, 40 GB+ without), or use the tiny "
                "test model (`ace-bridge models make-tiny DIR`, then `serve --model DIR`) to try the plumbing.",
            )

    def _ensure_loaded(self) -> None:
        if self._pipe is not None:
            return
        if not self.layout.has_base():
            self._state = "missing"
            raise EngineError(
                ErrorCode.MODEL_MISSING, f"the base model is not installed at {self.layout.base}; {PULL_HINT}"
            )
        device = self._resolve_device()
        self._check_size(device)
        self._state = "loading"
        self._error = None
        try:
            self._load(device)
            self._state = "loaded"
        except EngineError as exc:
            self._release()
            self._state, self._error = "error", exc.message
            raise
        except Exception as exc:  # noqa: BLE001 - report any load failure as a job error the user can read
            self._release()
            self._state, self._error = "error", f"{type(exc).__name__}: {exc}"
            if _is_oom(exc):
                raise EngineError(
                    ErrorCode.OUT_OF_MEMORY, f"out of memory while loading the model; {_oom_hint()}"
                ) from exc
            raise EngineError(ErrorCode.INTERNAL, f"loading the model failed: {type(exc).__name__}: {exc}") from exc

    def _load(self, device: str) -> None:
        from diffusers import FluxFillPipeline

        from bridge_server.engine.convert import check_lora_shapes, kohya_to_diffusers, load_safetensors

        dtype = self._resolve_dtype(device)
        extra: dict[str, Any] = {}
        if self.quantize == "nf4":
            extra["transformer"] = self._load_nf4_transformer(device, dtype)
        pipe = FluxFillPipeline.from_pretrained(str(self.layout.base), dtype=dtype, local_files_only=True,
                                            use_safetensors=True, **extra)
        for component in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
            component.eval()  # T5 dropout would make outputs nondeterministic
        _add_image_token(pipe)
        transformer = pipe.transformer
        self._adapters = []
        for name, path in self.layout.loras.items():
            if not path.is_file():
                continue
            converted = kohya_to_diffusers(
                load_safetensors(path, what=f"ACE++ {name} LoRA"),
                name=path.name,
                num_double=len(transformer.transformer_blocks),
                num_single=len(transformer.single_transformer_blocks),
                dtype=dtype,
            )
            check_lora_shapes(converted, transformer, name=path.name)
            with warnings.catch_warnings():
                # The three task LoRAs are meant to live side by side as named adapters; peft warns at each one.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(converted, adapter_name=name)
            self._adapters.append(name)
        mode = self._resolve_memory_mode(device)
        if mode == "gpu":
            pipe.to(device)
        elif mode == "model-offload":
            pipe.enable_model_cpu_offload(device=device)
        elif mode == "sequential-offload":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
        self._pipe, self._device, self._memory_mode, self._dtype = pipe, device, mode, dtype
        self._apply_optimizations()
        log.info(
            "ACE++ loaded from %s on %s (%s, %s), adapters %s", self.layout.root, device, mode, dtype, self._adapters
        )

    def _load_nf4_transformer(self, device: str, dtype: Any):
        """The Fill transformer in 4-bit NF4 (bitsandbytes): ~7 GB instead of 23.8, slower matmuls, the largest
        quality loss of the options. CUDA only; the LoRAs still load on top (peft wraps the 4-bit linears)."""
        if not str(device).startswith("cuda"):
            raise EngineError(ErrorCode.BAD_REQUEST, "nf4 quantisation needs a CUDA GPU; start without --quantize")
        from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        return FluxTransformer2DModel.from_pretrained(
            str(self.layout.base), subfolder="transformer", quantization_config=config, dtype=dtype,
            local_files_only=True, use_safetensors=True,
        )

    def _apply_optimizations(self) -> None:
        """Optional hooks from bridge_server/engine/optimize.py (another module's job); skipped when absent."""
        self._optimized = {}
        if self.optimizations is None or importlib.util.find_spec(f"{__package__}.optimize") is None:
            return
        optimize = importlib.import_module(f"{__package__}.optimize")
        apply = getattr(optimize, "apply_optimizations", None)
        if apply is not None:
            self._optimized = dict(apply(self._pipe, self.optimizations) or {})

    def _fused_adapters(self) -> bool:
        return str(self._optimized.get("fuse_lora", "")).startswith("applied")

    def _load_fft(self):
        if self._fft is not None:
            return self._fft
        import torch
        from accelerate import init_empty_weights
        from diffusers import FluxTransformer2DModel

        from bridge_server.engine.convert import bfl_to_diffusers, load_safetensors

        config = dict(FluxTransformer2DModel.load_config(str(self.layout.base / "transformer")))
        config["in_channels"] = 448  # 64 noise + 64 edit + 64 change + 256 mask; not inferred from the file
        state = bfl_to_diffusers(load_safetensors(self.layout.fft, what="ACE++ FFT model"), name="ACE++ FFT model")
        width = state.get("x_embedder.weight")
        if width is None or width.shape[1] != 448:
            got = None if width is None else width.shape[1]
            raise EngineError(
                ErrorCode.MODEL_MISSING,
                f"{self.layout.fft} takes {got} input channels, not 448; it is not the ACE++ FFT model",
            )
        with init_empty_weights():
            fft = FluxTransformer2DModel.from_config(config)
        state = {k: v.to(self._dtype) for k, v in state.items()}
        try:
            fft.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise EngineError(
                ErrorCode.MODEL_MISSING, f"{self.layout.fft} does not fit the installed base model ({str(exc)[:300]})"
            ) from exc
        fft.eval()
        if self._memory_mode == "sequential-offload":
            from accelerate import cpu_offload

            cpu_offload(fft, execution_device=torch.device(self._device))
        self._fft = fft
        return fft

    def _fft_text_tokenizer(self):
        """The FFT model's T5 tokenizer: a fresh load of the base folder's tokenizer_2 (the pipeline's own copy
        already holds the LoRA path's `{image}`) plus the authors' 14 identifiers, `{image}` at 32101 on real T5."""
        if self._fft_tokenizer is not None:
            return self._fft_tokenizer
        from bridge_server.engine import fft_text

        pipe = self._pipe
        folder = self.layout.base / "tokenizer_2"
        fresh = type(pipe.tokenizer_2).from_pretrained(str(folder), local_files_only=True)
        rows = pipe.text_encoder_2.get_input_embeddings().weight.shape[0]
        try:
            self._fft_tokenizer = fft_text.add_identifiers(fresh, rows)
        except ValueError as exc:
            raise EngineError(ErrorCode.INTERNAL, f"{folder}: {exc}") from exc
        return self._fft_tokenizer

    # ------------------------------------------------------------------------------------------------------------
    # Running

    def run(
        self,
        job: EngineJob,
        on_step: StepCallback,
        is_cancelled: Callable[[], bool],
        *,
        on_preview: PreviewCallback | None = None,
    ) -> EngineResult:
        with self._lock:
            self._cancel_timer()
            try:
                return self._run(job, on_step, is_cancelled, on_preview)
            finally:
                self._last_used = time.monotonic()
                self._schedule_idle_unload()

    def _run(
        self,
        job: EngineJob,
        on_step: StepCallback,
        is_cancelled: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> EngineResult:
        if job.task in TASK_NEEDS and (not self.layout.has_base() or not self._installed(TASK_NEEDS[job.task])):
            raise EngineError(ErrorCode.MODEL_MISSING, self._missing_message(job.task))
        plan = recipes.plan_for_job(job, max_tokens_limit=self.max_tokens_limit)
        if is_cancelled():
            raise JobCancelled()
        self._ensure_loaded()
        params = job.params or {}
        seed = int(job.seed) if job.seed is not None and int(job.seed) >= 0 else random.randint(0, 2**32 - 1)
        steps = int(params.get("steps", 28))
        guidance = float(params.get("guidance", _task_default(job.task, "guidance", 50.0)))
        if plan.adapter is not None and plan.adapter not in self._adapters:
            raise EngineError(ErrorCode.MODEL_MISSING, self._missing_message(job.task))
        try:
            model_rgb = self._generate(plan, seed, steps, guidance, on_step, is_cancelled, on_preview)
        except (JobCancelled, EngineError):
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise self._on_oom() from exc
            raise
        info = plan.info() | {
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "t5_max_length": self.t5_max_length,
            "model": str(self.layout.root),
            "memory_mode": self._memory_mode,
        }
        return EngineResult(rgb=plan.postprocess(model_rgb), info=info)

    def _on_oom(self) -> EngineError:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        message = f"the GPU ran out of memory on this job; {_oom_hint()}"
        if self._memory_request == "auto" and self._memory_mode in ("gpu", "model-offload"):
            lower = MEMORY_MODES[MEMORY_MODES.index(self._memory_mode) + 1]
            self._auto_floor = lower
            self.unload()  # the next job reloads one memory mode lower
            message += f" The next job runs in {lower} mode."
        return EngineError(ErrorCode.OUT_OF_MEMORY, message)

    def _select_adapter(self, adapter: str | None) -> None:
        """Named adapters stay loaded; a job only switches which one is active (never fuse + unload)."""
        pipe = self._pipe
        if not self._adapters:
            return
        if self._fused_adapters():
            # optimize.py fused the active adapter into the weights: switch through its unfuse/fuse pair.
            optimize = importlib.import_module(f"{__package__}.optimize")
            if adapter is None:
                optimize.unfuse(pipe)
                pipe.disable_lora()
            else:
                pipe.enable_lora()
                if getattr(pipe.transformer, "_ace_fused_adapter", None) != adapter:
                    optimize.fuse_active_adapter(pipe, adapter)
            return
        if adapter is None:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([adapter], adapter_weights=[1.0])

    def _generate(
        self,
        plan: recipes.Plan,
        seed: int,
        steps: int,
        guidance: float,
        on_step: StepCallback,
        is_cancelled: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> np.ndarray:
        import math

        import torch
        from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self._pipe
        fft = plan.transformer == "fft"
        transformer = self._load_fft() if fft else pipe.transformer
        self._select_adapter(None if fft else plan.adapter)
        device = pipe._execution_device
        dtype = self._dtype
        height, width = plan.height, plan.width
        moved = False
        try:
            # no_grad, not inference_mode: offload hooks move weights inside this block, and inference tensors
            # would later refuse peft's requires_grad toggling when adapters are switched.
            with torch.no_grad():
                if fft and self._memory_mode in ("gpu", "model-offload"):
                    transformer.to(device)
                    moved = True
                # 1. Text: CLIP pooled + T5 sequence ({image} is one added T5 token). The FFT model reads the
                #    prompt as its authors' scepter embedder gives it: cleaned, T5 with their 14 identifiers.
                if fft:
                    from bridge_server.engine import fft_text

                    with _swapped_t5_tokenizer(pipe, self._fft_text_tokenizer()):
                        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
                            prompt=fft_text.clean_prompt(plan.prompt),
                            prompt_2=None,
                            device=device,
                            max_sequence_length=self.t5_max_length,
                        )
                else:
                    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
                        prompt=plan.prompt, prompt_2=None, device=device, max_sequence_length=self.t5_max_length
                    )
                latent_c = pipe.vae.config.latent_channels
                lh, lw = 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)
                if fft:
                    # 2a. FFT: the noise FIRST, as the authors' scepter code draws it (LatentDiffusionACEPlus.
                    #     noise_sample): a fresh generator on the GPU seeded with the seed, bf16, (1, 16, 2*ceil(h/16),
                    #     2*ceil(w/16)); a CPU generator only where there is no GPU. The same generator then samples
                    #     the VAE latents (theirs use the unseeded global RNG there; ours stay reproducible).
                    generator = _noise_generator(device, seed)
                    noise = torch.randn(
                        (1, latent_c, lh, lw), generator=generator, device=generator.device, dtype=torch.bfloat16
                    ).to(device=device, dtype=dtype)
                else:
                    # LoRA/base: ONE CPU generator, the VAE samples first and the noise after (their diffusers path).
                    generator = torch.Generator("cpu").manual_seed(seed)
                # 2. Conditioning latents from OUR canvas (repainting scale already applied).
                canvas = _to_nchw(plan.canvas, device, dtype)
                mask = torch.from_numpy(plan.mask)[None, None].to(device=device, dtype=dtype)
                mask_packed, edit_packed = pipe.prepare_mask_latents(
                    mask, canvas, 1, latent_c, 1, height, width, dtype, device, generator
                )
                if fft:
                    _, change_packed = pipe.prepare_mask_latents(
                        mask,
                        _to_nchw(plan.change, device, dtype),
                        1,
                        latent_c,
                        1,
                        height,
                        width,
                        dtype,
                        device,
                        generator,
                    )
                    cond = torch.cat([edit_packed, change_packed, mask_packed], dim=-1)  # 64 + 64 + 256
                else:
                    cond = torch.cat([edit_packed, mask_packed], dim=-1)  # 64 + 256
                if not fft:
                    # 3. LoRA/base noise: the same CPU generator after the VAE sampling (their diffusers order).
                    noise = randn_tensor((1, latent_c, lh, lw), generator=generator, device=device, dtype=dtype)
                # Packed 2x2 per token, channels (c, ph, pw): the authors' 'c (h ph) (w pw) -> (h w) (c ph pw)'.
                latents = pipe._pack_latents(noise, 1, latent_c, lh, lw)
                image_ids = pipe._prepare_latent_image_ids(1, lh // 2, lw // 2, device, dtype)
                # 4. Timesteps: FLUX dynamic shift on the canvas's token count.
                sched = pipe.scheduler
                mu = calculate_shift(
                    (lh // 2) * (lw // 2),
                    sched.config.get("base_image_seq_len", 256),
                    sched.config.get("max_image_seq_len", 4096),
                    sched.config.get("base_shift", 0.5),
                    sched.config.get("max_shift", 1.15),
                )
                sigmas = np.linspace(1.0, 1 / steps, steps)
                timesteps, total = retrieve_timesteps(sched, steps, device, sigmas=sigmas, mu=mu)
                guidance_t = (
                    torch.full([1], guidance, device=device, dtype=torch.float32)
                    if transformer.config.guidance_embeds
                    else None
                )
                every = self.preview_every if on_preview is not None else 0
                if every and self._memory_mode not in PREVIEW_MODES:
                    every = 0  # offloaded: a VAE decode would evict the transformer; previews would cost a step each
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
                    if every and (i + 1) % every == 0 and i + 1 < total:
                        sigma = sched.sigmas[sched.step_index - 1]  # the sigma this step started from
                        on_preview(i + 1, self._preview(plan, before, noise_pred, sigma))
                    on_step(i + 1, total)
                if is_cancelled():
                    raise JobCancelled()
                # 6. Decode.
                latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
                latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
                image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
                rgb = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                return rgb.permute(1, 2, 0).cpu().numpy()
        finally:
            if moved:
                transformer.to("cpu")
            pipe.maybe_free_model_hooks()

    def _preview(self, plan: recipes.Plan, latents, velocity, sigma) -> np.ndarray:
        """Where the image is heading: x0 = x_t - sigma * v (flow matching), area-pooled in latent space so the
        decoded image is at most PREVIEW_MAX_SIDE px long (about 1/16 of a full decode at 1024 px), cropped to the
        result's part of the canvas like `Plan.postprocess` (reference columns dropped). Uint8 RGB HxWx3."""
        import torch
        import torch.nn.functional as F

        pipe = self._pipe
        height, width = plan.height, plan.width
        x0 = latents.float() - sigma.to(latents.device).float() * velocity.float()
        x0 = pipe._unpack_latents(x0, height, width, pipe.vae_scale_factor)
        lh, lw = x0.shape[-2:]
        factor = max(1, -(-max(lh, lw) * pipe.vae_scale_factor // PREVIEW_MAX_SIDE))
        if factor > 1:
            x0 = F.interpolate(x0, size=(-(-lh // factor), -(-lw // factor)), mode="area")
        x0 = x0 / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(x0.to(pipe.vae.dtype), return_dict=False)[0]
        rgb = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        ph, pw = rgb.shape[:2]
        x, y, w, h = plan.crop
        x0c, x1c = round(x * pw / width), round((x + w) * pw / width)
        y0c, y1c = round(y * ph / height), round((y + h) * ph / height)
        part = rgb[y0c : max(y1c, y0c + 1), x0c : max(x1c, x0c + 1)]
        return np.ascontiguousarray(part)

    # ------------------------------------------------------------------------------------------------------------
    # Unloading

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_idle_unload(self) -> None:
        if self.idle_unload_s is None or self._pipe is None:
            return
        self._timer = threading.Timer(self.idle_unload_s, self.idle_check)
        self._timer.daemon = True
        self._timer.start()

    def idle_check(self) -> bool:
        """Unload when idle for `idle_unload_s` (called by the timer; the daemon may also call it). True if unloaded."""
        if self.idle_unload_s is None:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # a job is running
        try:
            if self._pipe is not None and time.monotonic() - self._last_used >= self.idle_unload_s:
                self._release()
                self._state = "unloaded"
                return True
            return False
        finally:
            self._lock.release()

    def _release(self) -> None:
        self._pipe = None
        self._fft = None
        self._adapters = []
        self._device = None
        self._memory_mode = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def warm_up(self, sizes: tuple[tuple[int, int], ...] = ((1440, 720), (1024, 1024))) -> dict[str, float]:
        """Load the model now and run one step at each canvas size, so torch.compile (and the first CUDA kernels)
        do their one-time work at start-up instead of inside the first artist's job. Returns seconds per size.

        Two sizes are enough: with `compile_dynamic` None, the second size makes torch.compile switch to dynamic
        shapes, which then serve every other size without recompiling. The daemon calls this on the engine thread,
        so a job that arrives meanwhile waits its turn; the engine state says "warming up" until it is done."""
        timings: dict[str, float] = {}
        with self._lock:
            self._ensure_loaded()
            self._state = "warming up"
            try:
                for width, height in sizes:
                    started = time.monotonic()
                    job = EngineJob(task="generate", prompt="warm-up", seed=0,
                                    params={"steps": 1, "width": width, "height": height})
                    self._run(job, lambda *_: None, lambda: False, None)
                    timings[f"{width}x{height}"] = round(time.monotonic() - started, 3)
            finally:
                if self._pipe is not None:
                    self._state = "loaded"
        log.info("warm-up done: %s", timings)
        return timings

    def unload(self) -> None:
        with self._lock:
            self._cancel_timer()
            self._release()
            self._state = "unloaded"

    def close(self) -> None:
        self.unload()


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _to_nchw(array: np.ndarray, device, dtype):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def _noise_generator(device, seed: int):
    """The FFT noise generator as the authors make it: on the GPU that runs the job, seeded with the job's seed;
    on the CPU only where there is no GPU (a CPU and a CUDA generator give different numbers for one seed)."""
    import torch

    where = torch.device(device)
    if where.type != "cuda":
        where = torch.device("cpu")
    return torch.Generator(device=where).manual_seed(int(seed))


@contextlib.contextmanager
def _swapped_t5_tokenizer(pipe, tokenizer):
    """`pipe.encode_prompt` with another T5 tokenizer for one call (the FFT model's), restored afterwards."""
    original = pipe.tokenizer_2
    pipe.tokenizer_2 = tokenizer
    try:
        yield
    finally:
        pipe.tokenizer_2 = original


def _add_image_token(pipe) -> None:
    """`{image}` as ONE T5 token, as the authors' diffusers path does; robust for transformers 4 and 5 folders."""
    tok = pipe.tokenizer_2
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    rows = pipe.text_encoder_2.get_input_embeddings().weight.shape[0]
    if token_id is None or token_id == tok.unk_token_id or token_id >= rows:
        raise EngineError(
            ErrorCode.INTERNAL,
            f"could not add the {IMAGE_TOKEN} token to the T5 tokenizer (id {token_id}, {rows} embedding rows)",
        )


def _vram() -> dict[str, float] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return {"free_gib": round(free / 2**30, 2), "total_gib": round(total / 2**30, 2)}
    except Exception:  # noqa: BLE001 - state() must never fail
        return None


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "CUDA out of memory" in str(exc)


def _oom_hint() -> str:
    return (
        "lower max_tokens (e.g. 3072), close other GPU programs, or start the daemon with "
        "--memory-mode model-offload (or sequential-offload, slower)."
    )
