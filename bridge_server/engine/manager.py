"""The model manager: loads, places, optimises and unloads ACE++'s weights; hands the pipeline ready components.

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

import collections
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ace_protocol.errors import ErrorCode
from ace_protocol.tasks import MEMORY_MODES as TABLE_MEMORY_MODES

from bridge_server.engine import diffusers_adapter as dx
from bridge_server.engine import recipes, tiers
from bridge_server.engine.base import EngineError, EngineSetupError
from bridge_server.engine.pipeline import Components
from bridge_server.models.assemble import has_transformer_weights
from bridge_server.models.layout import ModelLayout

log = logging.getLogger(__name__)

MEMORY_MODES = tuple(TABLE_MEMORY_MODES)  # declared once, with what each does, in the task table
GPU_MODE_MIN_FREE_GIB = 40.0
MODEL_OFFLOAD_MIN_FREE_GIB = 26.0
# Without CUDA, refuse transformers above this many parameters (FLUX.1 has 11.9 B; the 1+1-block test model 0.55 B).
CPU_MAX_TRANSFORMER_PARAMS = 4e9
IMAGE_TOKEN = "{image}"
# Modes where the VAE stays resident; with offload a preview decode would swap the transformer out and back.
PREVIEW_MODES = ("gpu", "cpu", "group-offload")
PROMPT_CACHE_SIZE = 32  # prompt embeddings kept (on the CPU); a repeated prompt is not encoded again
TIER_ERROR_CODES = {
    "no_gpu": ErrorCode.MODEL_MISSING,
    "model_missing": ErrorCode.MODEL_MISSING,
    "too_little_ram": ErrorCode.OUT_OF_MEMORY,
    "too_little_memory": ErrorCode.OUT_OF_MEMORY,
}


def estimate_transformer_params(config: dict[str, Any]) -> float:
    """Rough parameter count from a FluxTransformer2DModel config (double block ~36 d^2, single ~15 d^2)."""
    d = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
    return float(config.get("num_layers", 19)) * 36 * d * d + float(config.get("num_single_layers", 38)) * 15 * d * d


class ModelManager:
    """Owns the loaded pipeline, the optional FFT transformer, the adapters and where everything lives."""

    def __init__(
        self,
        layout: ModelLayout,
        *,
        device: str = "auto",
        dtype: Any = None,
        memory_mode: str = "auto",
        t5_max_length: int = 512,
        optimizations: dict[str, Any] | None = None,
        quantize: str | None = None,
        preview_every: int = 4,
        tier: str = "auto",
        compile_cache: Path | None = None,
    ) -> None:
        if tier != "auto":
            tiers.tier(tier)  # ValueError now, at start, for an unknown name
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {memory_mode!r}")
        if quantize not in (None, "nf4"):
            raise ValueError(f"quantize must be None or 'nf4', got {quantize!r}")
        if quantize == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
            # Fail at start, not at the first job: the user is at the terminal now.
            raise ValueError("--quantize nf4 needs bitsandbytes: pip install 'ace-bridge[nf4]' (keep your torch)")
        self.layout = layout
        self.quantize = quantize
        self.device_request = device
        self.dtype_request = dtype
        self.memory_request = memory_mode
        self.auto_floor: str | None = None  # after an OOM in auto mode: never go above this mode again
        self.t5_max_length = t5_max_length
        self.optimizations = optimizations
        self.preview_every = max(0, int(preview_every))  # 0: never; a preview every N steps, never on the last
        self.state = "unloaded"
        self.error: str | None = None
        self.error_kind: str | None = None  # EngineSetupError.kind of the last load failure
        self.pipe: Any = None
        self.fft: Any = None
        self.fft_tokenizer: Any = None  # T5 tokenizer + the FFT model's 14 identifiers (fft_text.py)
        self.adapters: list[str] = []
        self.device: str | None = None
        self.memory_mode: str | None = None
        self.dtype: Any = None
        self.optimized: dict[str, str] = {}
        self.tier_request = tier
        self.compile_cache = compile_cache  # torch.compile's caches between starts (compile_cache.py)
        self.choice: tiers.Choice | None = None
        self.text_device: str | None = None  # where the text encoders run (None: with the pipeline)
        self.prompt_cache: collections.OrderedDict[tuple[str, bool, int], tuple[Any, Any, Any]] = (
            collections.OrderedDict()
        )
        self.prompt_cache_hits = 0
        self.prompt_cache_misses = 0
        self.progress = LoadProgress()  # what loading is doing now, for the editors (model_state.load)

    # ------------------------------------------------------------------------------------------------------------
    # Where and how

    def set_memory_mode(self, mode: str) -> None:
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
        self.memory_request = mode
        self.auto_floor = None

    def set_tier(self, name: str) -> None:
        if name != "auto":
            tiers.tier(name)  # ValueError for an unknown name, before anything changes
        self.tier_request = name
        self.choice = None

    def resolve_device(self) -> str:
        import torch

        if self.device_request != "auto":
            return self.device_request
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        # Apple Silicon: written to diffusers' MPS support (bf16 where the OS/chip has it), never run by us
        return "mps" if mps is not None and mps.is_available() else "cpu"

    def resolve_dtype(self, device: str) -> Any:
        import torch

        if self.dtype_request is None:
            return torch.bfloat16 if device.startswith(("cuda", "mps")) else torch.float32
        if isinstance(self.dtype_request, str):
            return getattr(torch, self.dtype_request)
        return self.dtype_request

    def resolve_memory_mode(self, device: str) -> str:
        if device.startswith("mps"):
            return "gpu"  # unified memory: no offload modes (accelerate's hooks are CUDA-oriented)
        if not device.startswith("cuda"):
            return "cpu"
        if self.memory_request != "auto":
            return self.memory_request
        free = (vram() or {}).get("free_gib", 0.0)
        mode = (
            "gpu"
            if free >= GPU_MODE_MIN_FREE_GIB
            else "model-offload"
            if free >= MODEL_OFFLOAD_MIN_FREE_GIB
            else "sequential-offload"
        )
        if self.auto_floor and MEMORY_MODES.index(mode) < MEMORY_MODES.index(self.auto_floor):
            mode = self.auto_floor
        return mode

    def check_size(self, device: str) -> None:
        """Refuse the real-size model without a GPU before reading 34 GB of weights."""
        config_path = self.layout.base / "transformer" / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        params = estimate_transformer_params(config)
        if not device.startswith(("cuda", "mps")) and params > CPU_MAX_TRANSFORMER_PARAMS:
            raise EngineSetupError(
                "no_gpu",
                ErrorCode.MODEL_MISSING,
                f"no CUDA GPU found, and this model ({params / 1e9:.1f} B transformer parameters, about 34 GB of "
                "bf16 weights with the text encoders) cannot run on the CPU in any useful time or memory. Run the "
                "daemon on a machine with an NVIDIA GPU (24 GB+ with offload, 40 GB+ without), or use the tiny "
                "test model (`ace-bridge models make-tiny DIR`, then `serve --model DIR`) to try the plumbing.",
            )

    # ------------------------------------------------------------------------------------------------------------
    # Loading

    def ensure_loaded(self, missing_hint: str) -> None:
        if self.pipe is not None:
            return
        if not self.layout.has_base():
            self.state = "missing"
            raise EngineError(
                ErrorCode.MODEL_MISSING, f"the base model is not installed at {self.layout.base}; {missing_hint}"
            )
        device = self.resolve_device()
        try:
            self.check_size(device)
        except EngineSetupError as exc:
            self.state, self.error, self.error_kind = "error", exc.message, exc.kind
            raise
        self.state = "loading"
        self.error = self.error_kind = None
        self.progress.start()
        dx.check_version()
        try:
            self.load(device)
            self.state = "loaded"
            self.progress.finish()
        except EngineError as exc:
            self.release()
            self.state, self.error = "error", exc.message
            self.error_kind = getattr(exc, "kind", None)
            raise
        except Exception as exc:  # noqa: BLE001 - report any load failure as a job error the user can read
            self.release()
            self.state, self.error = "error", f"{type(exc).__name__}: {exc}"
            if is_oom(exc):
                raise EngineError(
                    ErrorCode.OUT_OF_MEMORY, f"out of memory while loading the model; {oom_hint()}"
                ) from exc
            raise EngineError(ErrorCode.INTERNAL, f"loading the model failed: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------------------------------------------------
    # Tiers

    def machine(self, device: str) -> tiers.Machine:
        import torch

        kind = "cuda" if device.startswith("cuda") else "mps" if device.startswith("mps") else "cpu"
        host = host_ram_gb()
        free = (vram() or {}).get("free_gib") if kind == "cuda" else (host if kind == "mps" else None)
        return tiers.Machine(kind, free, host, fp8_ok=hasattr(torch, "float8_e4m3fn"))

    def transformer_files(self) -> dict[str, dict[str, str]]:
        from bridge_server.models.find import transformer_files

        return transformer_files(self.layout.root)

    def available(self) -> tiers.Available:
        fill = self.transformer_files()["fill"]
        gguf = frozenset(k for k in fill if k[:1] in ("Q", "B", "F") and k.upper() == k)
        return tiers.Available(
            bf16=(self.layout.has_base() and has_transformer_weights(self.layout.base))
            or any(k in fill for k in ("bf16", "fp16", "fp32")),
            fp8="fp8" in fill,
            gguf=gguf,
            tiny=(self.layout.root / "TINY_MODEL.json").is_file(),
        )

    def choose(self, device: str) -> tiers.Choice:
        try:
            return tiers.choose_tier(self.machine(device), self.available(), requested=self.tier_request)
        except tiers.TierError as exc:
            raise EngineSetupError(
                exc.kind, TIER_ERROR_CODES.get(exc.kind, ErrorCode.MODEL_MISSING), exc.message
            ) from exc

    def preflight(self) -> list[str]:
        """Problems visible before any job (status and the panel show them): a full-size model without a GPU."""
        if not self.layout.has_base() or self.pipe is not None:
            return []
        try:
            self.check_size(self.resolve_device())
        except EngineSetupError as exc:
            return [f"{exc.kind}: {exc.message}"]
        except Exception:  # noqa: BLE001 - state() must never fail
            return []
        return []

    def tier_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tier_requested": self.tier_request}
        if self.choice is not None:
            out |= self.choice.as_state()
        out["prompt_cache"] = {
            "entries": len(self.prompt_cache),
            "hits": self.prompt_cache_hits,
            "misses": self.prompt_cache_misses,
        }
        return out

    def load(self, device: str) -> None:
        from diffusers import FluxFillPipeline

        from bridge_server.engine.convert import check_lora_shapes, kohya_to_diffusers, load_safetensors

        dtype = self.resolve_dtype(device)
        self.choice = choice = self.choose(device)
        tier = choice.tier
        loras = [(name, path) for name, path in self.layout.loras.items() if path.is_file()]
        # the stages a user waits through, in order; the big ones (transformer, text encoders) dominate
        step = self.progress.stages(
            ["transformer", "text encoders and VAE", *(f"{name} LoRA" for name, _ in loras), f"placing ({tier.name})"]
            + (["optimizing"] if self.optimizations is not None else []),
            tier=tier.name,
        )
        extra: dict[str, Any] = {}
        step()
        if self.quantize == "nf4":
            extra["transformer"] = self._load_nf4_transformer(device, dtype)
        else:
            transformer = self.load_transformer("fill", choice.weights, dtype)
            if transformer is not None:
                extra["transformer"] = transformer
        step()
        pipe = FluxFillPipeline.from_pretrained(
            str(self.layout.base), dtype=dtype, local_files_only=True, use_safetensors=True, **extra
        )
        for component in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
            component.eval()  # T5 dropout would make outputs nondeterministic
        add_image_token(pipe)
        transformer = pipe.transformer
        self.adapters = []
        for name, path in loras:
            step()
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
            self.adapters.append(name)
        if choice.weights == "fp8" and not any(p.dtype == _fp8() for p in transformer.parameters()):
            from bridge_server.engine.weights import cast_fp8

            cast_fp8(transformer, dtype)  # fp8 weight-only from the bf16 weights (LoRA layers stay unfused)
        step()
        mode = self.place(pipe, device, tier)
        self.pipe, self.device, self.memory_mode, self.dtype = pipe, device, mode, dtype
        if self.optimizations is not None:
            step()
        self.apply_optimizations()
        log.info(
            "ACE++ loaded from %s on %s (tier %s: %s; %s, %s), adapters %s",
            self.layout.root,
            device,
            tier.name,
            choice.reason,
            mode,
            dtype,
            self.adapters,
        )

    def load_transformer(self, which: str, weights: str, dtype: Any) -> Any:
        """The transformer for `which` ("fill" or "fft") in the tier's weights, from a single file or GGUF; None
        for the Fill transformer of the base folder (the pipeline loads it)."""
        from bridge_server.engine import weights as files

        in_channels = 448 if which == "fft" else 384
        found = self.transformer_files()[which]
        what = "ACE++ FFT model" if which == "fft" else "FLUX.1-Fill transformer"
        if weights not in ("bf16", "fp8") and which == "fft" and weights not in found:
            # the FFT in the same family as the Fill file, else its smallest GGUF
            family = next((f for f, types in tiers.GGUF_FAMILIES.items() if weights in types), None)
            same = [t for t in tiers.GGUF_FAMILIES.get(family or "", ()) if t in found]
            others = sorted(
                (t for t in found if t in tiers.TRANSFORMER_GB and t.upper() == t),
                key=lambda t: tiers.TRANSFORMER_GB[t],
            )
            weights = (same or others or ["bf16"])[0]
        if weights in found and weights not in ("bf16", "fp16", "fp32", "fp8"):
            return files.load_gguf_transformer(
                Path(found[weights]), self.layout.base, dtype=dtype, in_channels=in_channels, what=what
            )
        if weights == "fp8" and "fp8" in found:
            return files.load_single_file_transformer(
                Path(found["fp8"]), self.layout.base, dtype=dtype, in_channels=in_channels, keep_fp8=True, what=what
            )
        if which == "fft":
            path = (
                self.layout.fft
                if self.layout.has_fft()
                else next((Path(found[k]) for k in ("bf16", "fp16", "fp32", "fp8") if k in found), self.layout.fft)
            )
            model = files.load_single_file_transformer(path, self.layout.base, dtype=dtype, in_channels=448, what=what)
            if weights == "fp8":
                files.cast_fp8(model, dtype)
            return model
        if not has_transformer_weights(self.layout.base):
            # an assembled base folder (models/assemble.py) holds only the config: the weights are a recorded file
            single = next((found[k] for k in ("bf16", "fp16", "fp32", "fp8") if k in found), None)
            if single is None:
                raise EngineSetupError(
                    "model_missing",
                    ErrorCode.MODEL_MISSING,
                    f"no {weights} FLUX.1-Fill transformer weights: "
                    f"{Path(self.layout.base) / 'transformer' / 'diffusion_pytorch_model.safetensors'} is missing "
                    "(pickled .bin/.pt files are never loaded) and no transformer file is recorded; run "
                    "`ace-bridge models pull`, or `ace-bridge models find DIR` on the folder that has it, or pick "
                    "another tier",
                )
            return files.load_single_file_transformer(
                Path(single), self.layout.base, dtype=dtype, in_channels=384, what=what
            )
        return None

    def place(self, pipe: Any, device: str, tier: tiers.Tier) -> str:
        """Put the pipeline where the tier (or an explicit --memory-mode) says; returns the memory mode."""
        import torch

        legacy = self.memory_request != "auto" or self.auto_floor is not None or not device.startswith("cuda")
        mode = self.resolve_memory_mode(device) if legacy else tier.placement
        if tier.placement in ("group-offload", "sequential-offload") and not device.startswith("cuda"):
            mode = tier.placement  # a forced offload tier on the CPU: the same hooks, the CPU executes (tests)
        self.text_device = None
        if tier.vae_tiling:
            pipe.vae.enable_tiling()
        if mode == "model-offload":
            pipe.enable_model_cpu_offload(device=device)
        elif mode == "sequential-offload" and device.startswith("cuda"):
            pipe.enable_sequential_cpu_offload(device=device)
        elif mode == "sequential-offload":
            # a forced sequential tier on the CPU (tests): the same accelerate hooks, the CPU executes
            from accelerate import cpu_offload

            for component in (pipe.transformer, pipe.vae):
                cpu_offload(component, execution_device=torch.device(device))
            self.text_device = "cpu"
        elif mode == "group-offload":
            cuda = device.startswith("cuda")
            pipe.transformer.enable_group_offload(
                onload_device=torch.device(device),
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=cuda,
                record_stream=cuda,
                low_cpu_mem_usage=False,
            )
            pipe.vae.to(device)
            self.text_device = "cpu"
        elif tier.text_encoders == "cpu" and mode == "gpu":
            pipe.transformer.to(device)
            pipe.vae.to(device)
            self.text_device = "cpu"  # T5-XXL and CLIP run on the CPU; embeddings move to the card (and are cached)
        else:
            pipe.to(device)
        if mode == "cpu" and tier.text_encoders == "cpu" and tier.name != "cpu":
            self.text_device = "cpu"
        return mode

    def _load_nf4_transformer(self, device: str, dtype: Any) -> Any:
        """The Fill transformer in 4-bit NF4 (bitsandbytes): ~7 GB instead of 23.8, slower matmuls, the largest
        quality loss of the options. CUDA only; the LoRAs still load on top (peft wraps the 4-bit linears)."""
        if not str(device).startswith("cuda"):
            raise EngineError(ErrorCode.BAD_REQUEST, "nf4 quantisation needs a CUDA GPU; start without --quantize")
        from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        return FluxTransformer2DModel.from_pretrained(
            str(self.layout.base),
            subfolder="transformer",
            quantization_config=config,
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
        )

    def apply_optimizations(self) -> None:
        """Optional speed hooks from bridge_server/engine/optimize.py; skipped when absent."""
        self.optimized = {}
        if self.optimizations is None or importlib.util.find_spec(f"{__package__}.optimize") is None:
            return
        optimize = importlib.import_module(f"{__package__}.optimize")
        apply = getattr(optimize, "apply_optimizations", None)
        options = dict(self.optimizations)
        if dx.is_gguf_model(self.pipe.transformer) or self.memory_mode == "group-offload":
            # quantized or streamed weights: LoRAs stay unfused, no QKV concat, no second quantisation
            options.update(fuse_lora=False, fuse_qkv=False, fp8=False)
        if options.get("compile") and self.compile_cache is not None:
            from bridge_server.engine import compile_cache

            cache = compile_cache.activate(self.compile_cache)  # before anything compiles
            self.optimized["compile_cache"] = ", ".join(f"{k}: {v}" for k, v in cache.items())
        if apply is not None:
            self.optimized |= dict(apply(self.pipe, options) or {})

    def compile_gate(self) -> Any:
        """A CompileGate (background_compile.py) when the transformer was compiled and may be compiled in the
        background while jobs run eagerly: resident on one device (offload hooks move weights per call and would
        race), no first-block cache (its hooks keep per-step state), and on a GPU room for a second set of
        activations. None otherwise: the warm-up then runs before jobs, as one step per size."""
        if not str(self.optimized.get("compile", "")).startswith("applied") or self.pipe is None:
            return None
        if self.memory_mode not in ("gpu", "cpu") or str(self.optimized.get("cache", "")).startswith("applied"):
            return None
        if str(self.device).startswith("cuda") and (vram() or {}).get("free_gib", 0.0) < 2 * tiers.ACTIVATIONS_GB:
            return None
        from bridge_server.engine.background_compile import CompileGate

        gate = CompileGate(self.pipe.transformer)
        return gate if gate.modules else None

    def fused_adapters(self) -> bool:
        return str(self.optimized.get("fuse_lora", "")).startswith("applied")

    def load_fft(self) -> Any:
        if self.fft is not None:
            return self.fft
        import torch

        weights = self.choice.weights if self.choice is not None else "bf16"
        fft = self.load_transformer("fft", weights, self.dtype)
        device = torch.device(self.device or "cpu")
        if self.memory_mode == "sequential-offload":
            from accelerate import cpu_offload

            cpu_offload(fft, execution_device=device)
        elif self.memory_mode == "group-offload":
            cuda = str(self.device).startswith("cuda")
            fft.enable_group_offload(
                onload_device=device,
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=cuda,
                record_stream=cuda,
            )
        self.fft = fft
        return fft

    def fft_text_tokenizer(self) -> Any:
        """The FFT model's T5 tokenizer: a fresh load of the base folder's tokenizer_2 (the pipeline's own copy
        already holds the LoRA path's `{image}`) plus the authors' 14 identifiers, `{image}` at 32101 on real T5."""
        if self.fft_tokenizer is not None:
            return self.fft_tokenizer
        from bridge_server.engine import fft_text

        pipe = self.pipe
        folder = self.layout.base / "tokenizer_2"
        fresh = type(pipe.tokenizer_2).from_pretrained(str(folder), local_files_only=True)
        rows = pipe.text_encoder_2.get_input_embeddings().weight.shape[0]
        try:
            self.fft_tokenizer = fft_text.add_identifiers(fresh, rows)
        except ValueError as exc:
            raise EngineError(ErrorCode.INTERNAL, f"{folder}: {exc}") from exc
        return self.fft_tokenizer

    # ------------------------------------------------------------------------------------------------------------
    # One job

    def select_adapter(self, adapter: str | None) -> None:
        """Named adapters stay loaded; a job only switches which one is active (never fuse + unload)."""
        pipe = self.pipe
        if not self.adapters:
            return
        if self.fused_adapters():
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

    def encode_prompt(self, prompt: str, fft: bool) -> tuple[Any, Any, Any]:
        """CLIP pooled + T5 sequence on the execution device; a repeated prompt comes from the cache. The FFT model
        reads the prompt as its authors' scepter embedder gives it: cleaned, T5 with their 14 identifiers."""
        key = (prompt, fft, self.t5_max_length)
        cached = self.prompt_cache.get(key)
        device = self.execution_device()
        if cached is not None:
            self.prompt_cache.move_to_end(key)
            self.prompt_cache_hits += 1
            return tuple(t.to(device) for t in cached)  # type: ignore[return-value]
        self.prompt_cache_misses += 1
        pipe = self.pipe
        where = self.text_device or device
        if fft:
            from bridge_server.engine import fft_text

            with swapped_t5_tokenizer(pipe, self.fft_text_tokenizer()):
                out = pipe.encode_prompt(
                    prompt=fft_text.clean_prompt(prompt),
                    prompt_2=None,
                    device=where,
                    max_sequence_length=self.t5_max_length,
                )
        else:
            out = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=where, max_sequence_length=self.t5_max_length)
        self.prompt_cache[key] = tuple(t.detach().to("cpu") for t in out)
        while len(self.prompt_cache) > PROMPT_CACHE_SIZE:
            self.prompt_cache.popitem(last=False)
        return tuple(t.to(device) for t in out)  # type: ignore[return-value]

    def execution_device(self) -> Any:
        """Where the denoising runs: the offload hooks' device, else the device the pipeline was placed on."""
        import torch

        if self.memory_mode in ("model-offload", "sequential-offload") or self.device is None:
            return dx.execution_device(self.pipe)
        return torch.device(self.device)

    @contextlib.contextmanager
    def components(self, plan: recipes.Plan) -> Iterator[Components]:
        """The loaded pieces for this plan, placed for the job; put back afterwards (FFT to the CPU, hooks freed)."""
        import torch

        pipe = self.pipe
        fft = plan.transformer == "fft"
        transformer = self.load_fft() if fft else pipe.transformer
        self.select_adapter(None if fft else plan.adapter)
        device = self.execution_device()
        moved = False
        try:
            if fft and self.memory_mode in ("gpu", "model-offload"):
                with torch.no_grad():
                    transformer.to(device)
                moved = True
            every = self.preview_every if self.memory_mode in PREVIEW_MODES else 0
            yield Components(
                pipe=pipe,
                transformer=transformer,
                device=device,
                dtype=self.dtype,
                encode=self.encode_prompt,
                fft=fft,
                preview_every=every,
            )
        finally:
            if moved:
                transformer.to("cpu")
            pipe.maybe_free_model_hooks()

    def on_oom(self) -> EngineError:
        """An OOM during a job: free the cache; in auto mode unload so the next job loads one mode lower."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        message = f"the GPU ran out of memory on this job; {oom_hint()}"
        if self.memory_request == "auto" and self.memory_mode in ("gpu", "model-offload"):
            lower = MEMORY_MODES[MEMORY_MODES.index(self.memory_mode) + 1]
            self.auto_floor = lower
            self.release()  # the next job reloads one memory mode lower
            self.state = "unloaded"
            message += f" The next job runs in {lower} mode."
        return EngineError(ErrorCode.OUT_OF_MEMORY, message)

    # ------------------------------------------------------------------------------------------------------------
    # Unloading

    def release(self) -> None:
        self.progress = LoadProgress()
        self.prompt_cache.clear()
        self.pipe = None
        self.fft = None
        self.adapters = []
        self.device = None
        self.memory_mode = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


# ----------------------------------------------------------------------------------------------------------------
# Helpers


class LoadProgress:
    """Where a load (or warm-up) is: stage i of n, since when. Written by the engine thread, read by status calls
    on other threads (plain attribute writes; a reader sees one stage or the next, never a torn one)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.step = 0
        self.began: float | None = None
        self.ended: float | None = None
        self.tier: str | None = None
        self.phase = ""  # "" | "loading" | "warming up"

    def start(self) -> None:
        self.names, self.step, self.tier = [], 0, None
        self.began, self.ended, self.phase = time.monotonic(), None, "loading"

    def stages(self, names: list[str], *, tier: str | None = None) -> Callable[[], None]:
        """Declare the stages; the returned function moves to the next one."""
        self.names, self.step, self.tier = list(names), 0, tier

        def advance() -> None:
            self.step = min(self.step + 1, len(self.names))

        return advance

    def warming(self, stage: str, step: int, steps: int) -> None:
        self.phase, self.names, self.step = "warming up", [stage] * steps, step

    def finish(self) -> None:
        self.phase, self.ended = "", time.monotonic()

    def as_state(self, state: str) -> dict[str, Any]:
        out: dict[str, Any] = {"state": state}
        if self.tier:
            out["tier"] = self.tier
        if self.began is not None:
            out["elapsed_s"] = round((self.ended or time.monotonic()) - self.began, 1)
        if self.phase and self.names:
            out |= {"stage": self.names[max(0, self.step - 1)], "step": self.step, "steps": len(self.names)}
        return out


@contextlib.contextmanager
def swapped_t5_tokenizer(pipe: Any, tokenizer: Any) -> Iterator[None]:
    """`pipe.encode_prompt` with another T5 tokenizer for one call (the FFT model's), restored afterwards."""
    original = pipe.tokenizer_2
    pipe.tokenizer_2 = tokenizer
    try:
        yield
    finally:
        pipe.tokenizer_2 = original


def add_image_token(pipe: Any) -> None:
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


def _fp8() -> Any:
    import torch

    return getattr(torch, "float8_e4m3fn", None)


def host_ram_gb() -> float:
    """Available host RAM in GB (MemAvailable on Linux; total physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def vram() -> dict[str, float] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return {"free_gib": round(free / 2**30, 2), "total_gib": round(total / 2**30, 2)}
    except Exception:  # noqa: BLE001 - state() must never fail
        return None


def is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "CUDA out of memory" in str(exc)


def oom_hint() -> str:
    return (
        "lower max_tokens (e.g. 3072), close other GPU programs, or start the daemon with "
        "--memory-mode model-offload (or sequential-offload, slower)."
    )
