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

import contextlib
import importlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from ace_protocol.errors import ErrorCode

from bridge_server.engine import diffusers_adapter as dx
from bridge_server.engine import recipes
from bridge_server.engine.base import EngineError
from bridge_server.engine.pipeline import Components
from bridge_server.models.layout import ModelLayout

log = logging.getLogger(__name__)

MEMORY_MODES = ("auto", "gpu", "model-offload", "sequential-offload")
GPU_MODE_MIN_FREE_GIB = 40.0
MODEL_OFFLOAD_MIN_FREE_GIB = 26.0
# Without CUDA, refuse transformers above this many parameters (FLUX.1 has 11.9 B; the 1+1-block test model 0.55 B).
CPU_MAX_TRANSFORMER_PARAMS = 4e9
IMAGE_TOKEN = "{image}"
# Modes where the VAE stays resident; with offload a preview decode would swap the transformer out and back.
PREVIEW_MODES = ("gpu", "cpu")


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
    ) -> None:
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
        self.pipe: Any = None
        self.fft: Any = None
        self.fft_tokenizer: Any = None  # T5 tokenizer + the FFT model's 14 identifiers (fft_text.py)
        self.adapters: list[str] = []
        self.device: str | None = None
        self.memory_mode: str | None = None
        self.dtype: Any = None
        self.optimized: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Where and how

    def set_memory_mode(self, mode: str) -> None:
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
        self.memory_request = mode
        self.auto_floor = None

    def resolve_device(self) -> str:
        import torch

        if self.device_request != "auto":
            return self.device_request
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolve_dtype(self, device: str) -> Any:
        import torch

        if self.dtype_request is None:
            return torch.bfloat16 if device.startswith("cuda") else torch.float32
        if isinstance(self.dtype_request, str):
            return getattr(torch, self.dtype_request)
        return self.dtype_request

    def resolve_memory_mode(self, device: str) -> str:
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
        if not device.startswith("cuda") and params > CPU_MAX_TRANSFORMER_PARAMS:
            raise EngineError(
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
        self.check_size(device)
        self.state = "loading"
        self.error = None
        dx.check_version()
        try:
            self.load(device)
            self.state = "loaded"
        except EngineError as exc:
            self.release()
            self.state, self.error = "error", exc.message
            raise
        except Exception as exc:  # noqa: BLE001 - report any load failure as a job error the user can read
            self.release()
            self.state, self.error = "error", f"{type(exc).__name__}: {exc}"
            if is_oom(exc):
                raise EngineError(
                    ErrorCode.OUT_OF_MEMORY, f"out of memory while loading the model; {oom_hint()}"
                ) from exc
            raise EngineError(ErrorCode.INTERNAL, f"loading the model failed: {type(exc).__name__}: {exc}") from exc

    def load(self, device: str) -> None:
        from diffusers import FluxFillPipeline

        from bridge_server.engine.convert import check_lora_shapes, kohya_to_diffusers, load_safetensors

        dtype = self.resolve_dtype(device)
        extra: dict[str, Any] = {}
        if self.quantize == "nf4":
            extra["transformer"] = self._load_nf4_transformer(device, dtype)
        pipe = FluxFillPipeline.from_pretrained(str(self.layout.base), dtype=dtype, local_files_only=True,
                                                use_safetensors=True, **extra)
        for component in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
            component.eval()  # T5 dropout would make outputs nondeterministic
        add_image_token(pipe)
        transformer = pipe.transformer
        self.adapters = []
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
            self.adapters.append(name)
        mode = self.resolve_memory_mode(device)
        if mode == "gpu":
            pipe.to(device)
        elif mode == "model-offload":
            pipe.enable_model_cpu_offload(device=device)
        elif mode == "sequential-offload":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
        self.pipe, self.device, self.memory_mode, self.dtype = pipe, device, mode, dtype
        self.apply_optimizations()
        log.info("ACE++ loaded from %s on %s (%s, %s), adapters %s", self.layout.root, device, mode, dtype,
                 self.adapters)

    def _load_nf4_transformer(self, device: str, dtype: Any) -> Any:
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

    def apply_optimizations(self) -> None:
        """Optional speed hooks from bridge_server/engine/optimize.py; skipped when absent."""
        self.optimized = {}
        if self.optimizations is None or importlib.util.find_spec(f"{__package__}.optimize") is None:
            return
        optimize = importlib.import_module(f"{__package__}.optimize")
        apply = getattr(optimize, "apply_optimizations", None)
        if apply is not None:
            self.optimized = dict(apply(self.pipe, self.optimizations) or {})

    def fused_adapters(self) -> bool:
        return str(self.optimized.get("fuse_lora", "")).startswith("applied")

    def load_fft(self) -> Any:
        if self.fft is not None:
            return self.fft
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
        state = {k: v.to(self.dtype) for k, v in state.items()}
        try:
            fft.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise EngineError(
                ErrorCode.MODEL_MISSING, f"{self.layout.fft} does not fit the installed base model ({str(exc)[:300]})"
            ) from exc
        fft.eval()
        if self.memory_mode == "sequential-offload":
            from accelerate import cpu_offload

            cpu_offload(fft, execution_device=torch.device(self.device))
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
        """CLIP pooled + T5 sequence on the execution device. The FFT model reads the prompt as its authors'
        scepter embedder gives it: cleaned, T5 with their 14 identifiers."""
        pipe = self.pipe
        device = dx.execution_device(pipe)
        if fft:
            from bridge_server.engine import fft_text

            with swapped_t5_tokenizer(pipe, self.fft_text_tokenizer()):
                return pipe.encode_prompt(prompt=fft_text.clean_prompt(prompt), prompt_2=None, device=device,
                                          max_sequence_length=self.t5_max_length)
        return pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, max_sequence_length=self.t5_max_length)

    @contextlib.contextmanager
    def components(self, plan: recipes.Plan) -> Iterator[Components]:
        """The loaded pieces for this plan, placed for the job; put back afterwards (FFT to the CPU, hooks freed)."""
        import torch

        pipe = self.pipe
        fft = plan.transformer == "fft"
        transformer = self.load_fft() if fft else pipe.transformer
        self.select_adapter(None if fft else plan.adapter)
        device = dx.execution_device(pipe)
        moved = False
        try:
            if fft and self.memory_mode in ("gpu", "model-offload"):
                with torch.no_grad():
                    transformer.to(device)
                moved = True
            every = self.preview_every if self.memory_mode in PREVIEW_MODES else 0
            yield Components(pipe=pipe, transformer=transformer, device=device, dtype=self.dtype,
                             encode=self.encode_prompt, fft=fft, preview_every=every)
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
