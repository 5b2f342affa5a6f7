"""Memory tiers: the fastest way to run ACE++ that fits this machine, chosen for the user (pure, no torch).

`choose_tier(Machine, Available)` looks at free VRAM, host RAM, the device kind and which transformer files exist,
walks TIERS from the fastest down and returns the first that fits, with the reason and why each faster one did not.
`serve --tier NAME` (or the engine's `tier=`) overrides it; the chosen tier and its reason are in the engine state,
so `ace-bridge status` and the panel show them.

Sizes are FLUX.1-Fill-dev's (the FFT model is the same size; GB as the files are, GiB-ish): transformer bf16 23.8,
fp8 11.9, GGUF Q8_0 12.7, Q6_K 9.9, Q5 8.3, Q4 6.8, Q3_K 4.25; T5-XXL 9.5 + CLIP/VAE 0.4; activations of a 1440x720
job with a tiled VAE about 2.0 (4.5 with the whole pipeline on the card, VAE untiled). Estimates, measured by
bench/gpu/tier_table.py where a GPU is lent.

| tier           | transformer                       | text encoders          | VAE   | VRAM need | host RAM need |
|----------------|-----------------------------------|------------------------|-------|-----------|---------------|
| full           | bf16 on the card                  | on the card            | whole | 38.5      | 8             |
| bf16           | bf16 on the card                  | CPU, embeddings cached | tiled | 26.5      | 17.9          |
| fp8            | fp8 weight-only (layerwise cast)  | CPU, cached            | tiled | 14.6      | 17.9 + 23.8   |
| gguf-q8 .. q3  | GGUF, dequantized per layer       | CPU, cached            | tiled | file+2.7  | 17.9          |
| group-offload  | smallest file, block groups streamed | CPU, cached         | tiled | 4.4       | 17.9 + 2 file |
| sequential     | layer by layer (fp8/bf16 file)    | CPU, cached            | tiled | 2.5       | 17.9 + file   |
Apple MPS (untested): unified memory, so VRAM and host needs are added and compared with the free memory.
| cpu            | tiny test models only             |                        |       |           |               |
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRANSFORMER_GB = {
    "bf16": 23.8,
    "fp8": 11.9,
    "Q8_0": 12.7,
    "Q6_K": 9.9,
    "Q5_K": 8.3,
    "Q5_1": 8.9,
    "Q5_0": 8.3,
    "Q4_K": 6.8,
    "Q4_1": 7.6,
    "Q4_0": 6.8,
    "Q3_K": 4.25,
    "Q2_K": 4.0,
    "BF16": 23.8,
    "F16": 23.8,
}
TEXT_GB = 9.5  # T5-XXL bf16
SMALL_GB = 0.4  # CLIP-L + VAE
ACTIVATIONS_GB = 2.0  # 1440x720 job, tiled VAE decode
ACTIVATIONS_FULL_GB = 4.5  # VAE untiled, text encoders' activations on the card
BASE_HOST_GB = 8.0  # Python, torch, diffusers and the decoded images
HEADROOM_GB = 0.3  # VRAM kept free for the CUDA context and fragmentation
GROUP_OFFLOAD_VRAM_GB = 2.0  # two block groups in flight (one computing, one arriving) + small modules

# GGUF type families, best quality first: a tier takes the best file of its family.
GGUF_FAMILIES = {
    "gguf-q8": ("Q8_0", "BF16", "F16"),
    "gguf-q6": ("Q6_K",),
    "gguf-q5": ("Q5_K", "Q5_1", "Q5_0"),
    "gguf-q4": ("Q4_K", "Q4_1", "Q4_0"),
    "gguf-q3": ("Q3_K", "Q2_K"),
}


# GGUF types `ace-bridge models quantize` can write (the gguf package has no K-quant writers), best first
WRITABLE = {"gguf-q8": ("Q8_0",), "gguf-q5": ("Q5_1", "Q5_0"), "gguf-q4": ("Q4_1", "Q4_0")}


@dataclass(frozen=True)
class Tier:
    name: str
    weights: str  # "bf16" | "fp8" | "gguf" | "best" (group/sequential offload: the smallest file there is)
    placement: str  # "gpu" | "group-offload" | "sequential-offload" | "cpu"
    text_encoders: str  # "gpu" | "cpu" (encode on the CPU, move the embeddings; a cache skips repeated prompts)
    vae_tiling: bool
    summary: str


TIERS: tuple[Tier, ...] = (
    Tier("full", "bf16", "gpu", "gpu", False, "everything in bf16 on the card"),
    Tier("bf16", "bf16", "gpu", "cpu", True, "bf16 transformer on the card, text encoders on the CPU"),
    Tier("fp8", "fp8", "gpu", "cpu", True, "fp8 weight-only transformer (upcast per layer), text encoders on the CPU"),
    *(
        Tier(name, "gguf", "gpu", "cpu", True, f"GGUF {'/'.join(types)} transformer, text encoders on the CPU")
        for name, types in GGUF_FAMILIES.items()
    ),
    Tier(
        "group-offload",
        "best",
        "group-offload",
        "cpu",
        True,
        "transformer in host RAM, streamed to the card one block group at a time (CUDA streams)",
    ),
    Tier("sequential-offload", "best", "sequential-offload", "cpu", True, "layer by layer from host RAM (slow)"),
    Tier("cpu", "bf16", "cpu", "cpu", False, "on the CPU (tiny test models only)"),
)
TIER_NAMES = tuple(t.name for t in TIERS)


def tier(name: str) -> Tier:
    for t in TIERS:
        if t.name == name:
            return t
    raise ValueError(f"unknown tier {name!r}; one of {', '.join(TIER_NAMES)}")


@dataclass(frozen=True)
class Machine:
    device_kind: str  # "cuda" | "mps" | "cpu"
    free_vram_gb: float | None  # None without a GPU (MPS: unified memory, give the free host RAM)
    host_ram_gb: float  # available host RAM
    fp8_ok: bool = True  # the GPU can hold float8 weights (any CUDA GPU with torch float8 dtypes)


@dataclass(frozen=True)
class Available:
    """Transformer files there are (for the task's transformer: Fill for LoRA tasks, the FFT for instruct)."""

    bf16: bool = False  # a diffusers folder or a bf16/fp16/fp32 single file
    fp8: bool = False  # an fp8 single file (loads without a bf16 copy in host RAM)
    gguf: frozenset[str] = frozenset()  # GGML types of GGUF files there are, e.g. {"Q8_0", "Q4_K"}
    tiny: bool = False  # the tiny random-weight test model


@dataclass
class Choice:
    tier: Tier
    reason: str
    weights: str  # what is loaded: "bf16", "fp8", or a GGUF type such as "Q4_K"
    rejected: list[tuple[str, str]] = field(default_factory=list)  # faster tiers and why not
    hint: str | None = None  # what would unlock a faster tier

    def as_state(self) -> dict[str, object]:
        out: dict[str, object] = {
            "tier": self.tier.name,
            "tier_reason": self.reason,
            "weights": self.weights,
            "tier_summary": self.tier.summary,
        }
        if self.hint:
            out["tier_hint"] = self.hint
        if self.rejected:
            out["tiers_rejected"] = [f"{name}: {why}" for name, why in self.rejected]
        return out


def best_gguf(family: str, available: frozenset[str]) -> str | None:
    return next((t for t in GGUF_FAMILIES[family] if t in available), None)


def _weights_for(t: Tier, files: Available) -> str | None:
    """Which file this tier would load, or None when there is none for it."""
    if t.weights == "bf16":
        return "bf16" if files.bf16 else None
    if t.weights == "fp8":
        return "fp8" if (files.fp8 or files.bf16) else None
    if t.weights == "gguf":
        return best_gguf(t.name, files.gguf)
    # offload tiers: the smallest file there is (less to stream, less host RAM). accelerate's sequential offload
    # cannot move GGUF parameters (diffusers' GGUFParameter refuses the meta device), so that tier takes fp8/bf16.
    gguf = [g for g in files.gguf if g in TRANSFORMER_GB] if t.placement != "sequential-offload" else []
    candidates = gguf + (["fp8"] if files.fp8 else [])
    candidates += ["bf16"] if files.bf16 else []
    return min(candidates, key=lambda w: TRANSFORMER_GB[w]) if candidates else None


def needs(t: Tier, weights: str) -> tuple[float, float]:
    """(VRAM, host RAM) in GB this tier needs with these weights."""
    size = TRANSFORMER_GB.get(weights, TRANSFORMER_GB["bf16"])
    host_text = TEXT_GB + SMALL_GB if t.text_encoders == "cpu" else 0.0
    if t.placement == "gpu" and t.text_encoders == "gpu":
        return size + TEXT_GB + SMALL_GB + ACTIVATIONS_FULL_GB + HEADROOM_GB, BASE_HOST_GB
    if t.placement == "gpu":
        # fp8 from a bf16 source reads the bf16 weights first (memory-mapped, cast a layer at a time)
        return size + SMALL_GB + ACTIVATIONS_GB + HEADROOM_GB, BASE_HOST_GB + host_text + (
            TRANSFORMER_GB["bf16"] if weights == "fp8" else 0.0
        )
    if t.placement == "group-offload":
        return GROUP_OFFLOAD_VRAM_GB + SMALL_GB + ACTIVATIONS_GB, BASE_HOST_GB + host_text + 2 * size
    if t.placement == "sequential-offload":
        return 0.5 + ACTIVATIONS_GB, BASE_HOST_GB + host_text + size
    return 0.0, BASE_HOST_GB + size + TEXT_GB + SMALL_GB


def _fits(t: Tier, weights: str, m: Machine) -> str | None:
    vram, host = needs(t, weights)
    if m.device_kind == "mps" and t.placement != "cpu":
        total = vram + host
        free = m.free_vram_gb if m.free_vram_gb is not None else m.host_ram_gb
        return None if total <= free else f"needs {total:.1f} GB of unified memory, {free:.1f} free"
    if t.placement != "cpu" and m.free_vram_gb is not None and vram > m.free_vram_gb:
        return f"needs {vram:.1f} GB of free VRAM, {m.free_vram_gb:.1f} free"
    if host > m.host_ram_gb:
        return f"needs {host:.1f} GB of host RAM, {m.host_ram_gb:.1f} available"
    return None


def choose_tier(m: Machine, files: Available, *, requested: str = "auto") -> Choice:
    """The fastest tier that fits (or the requested one, with what it will load). Raises TierError when nothing
    fits or the request cannot work here."""
    if requested != "auto":
        return _forced(m, files, tier(requested))
    if files.tiny or m.device_kind == "cpu":
        if not files.tiny and m.device_kind == "cpu":
            raise TierError(
                "no_gpu",
                "no CUDA GPU (or Apple MPS) found; FLUX-size models need one. Run the daemon "
                "on a machine with an NVIDIA GPU (6 GB or more), or try the plumbing with "
                "`ace-bridge serve --demo`.",
            )
        return Choice(
            tier("cpu") if m.device_kind == "cpu" else tier("full"),
            "tiny test model" + ("" if m.device_kind != "cpu" else " on the CPU"),
            "bf16",
        )
    rejected: list[tuple[str, str]] = []
    hint = None
    for t in TIERS:
        if t.placement == "cpu":
            continue
        if m.device_kind == "mps" and (t.placement in ("group-offload", "sequential-offload") or t.weights == "fp8"):
            rejected.append((t.name, "not on Apple MPS (CUDA only)"))
            continue
        if t.weights == "fp8" and not m.fp8_ok:
            rejected.append((t.name, "this torch/GPU has no float8 storage"))
            continue
        weights = _weights_for(t, files)
        if weights is None:
            why = "no file for it" if t.weights != "gguf" else f"no {'/'.join(GGUF_FAMILIES[t.name])} GGUF file"
            if t.weights == "gguf" and hint is None and files.bf16:
                writable = next((w for w in WRITABLE.get(t.name, ()) if _fits(t, w, m) is None), None)
                if writable:
                    hint = (
                        f"`ace-bridge models quantize --type {writable.lower()}` writes a file for tier "
                        f"{t.name}, faster than the tier chosen now"
                    )
            rejected.append((t.name, why))
            continue
        misfit = _fits(t, weights, m)
        if misfit:
            rejected.append((t.name, misfit))
            continue
        vram, host = needs(t, weights)
        free = f"{m.free_vram_gb:.1f} GB free VRAM" if m.free_vram_gb is not None else "unified memory"
        reason = (
            f"fastest tier that fits: {free}, {m.host_ram_gb:.1f} GB host RAM; this tier needs about "
            f"{vram:.1f} GB VRAM and {host:.1f} GB RAM with {weights} weights"
        )
        return Choice(t, reason, weights, rejected, hint)
    raise TierError(
        "too_little_memory",
        "no tier fits this machine: "
        + "; ".join(f"{n}: {w}" for n, w in rejected)
        + ". Free VRAM (close other GPU programs) or host RAM, or add a smaller GGUF file "
        "(`ace-bridge models find` / `models quantize`).",
    )


def _forced(m: Machine, files: Available, t: Tier) -> Choice:
    if t.placement in ("group-offload", "sequential-offload") and m.device_kind == "cpu":
        weights = _weights_for(t, files) or "bf16"
        return Choice(t, "requested (on the CPU: offload hooks run with the CPU as the execution device)", weights)
    found = _weights_for(t, files)
    if found is None:
        raise TierError(
            "model_missing",
            f"tier {t.name} needs a transformer file it can load ("
            + ("a " + "/".join(GGUF_FAMILIES[t.name]) + " GGUF" if t.weights == "gguf" else t.weights)
            + "); `ace-bridge models quantize` writes GGUF files, `models find` finds existing ones",
        )
    weights = found
    if t.placement != "cpu" and m.device_kind == "cpu" and not files.tiny:
        raise TierError("no_gpu", f"tier {t.name} needs a GPU and none was found")
    why = _fits(t, weights, m) if not files.tiny else None
    if why and "host RAM" in why:
        raise TierError(
            "too_little_ram",
            f"tier {t.name} {why}; pick a smaller tier (e.g. gguf-q4 or "
            "group-offload with a GGUF file) or close programs",
        )
    reason = "requested" + (f" (warning: {why})" if why else "")
    return Choice(t, reason, weights)


class TierError(Exception):
    """Nothing fits, or the requested tier cannot run here. `kind`: no_gpu | too_little_ram | too_little_memory |
    model_missing."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
