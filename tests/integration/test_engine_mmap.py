"""Cold start: single-file and GGUF transformers are memory-mapped, not read into fresh memory. The weights the
model computes with lie in the file's own mapping (the OS pages them in as they are used and can drop them again),
so loading a 12-24 GB file costs no second copy in host RAM."""

from __future__ import annotations

from pathlib import Path

import engine_fixtures as fx
import torch
from safetensors.torch import save_file

from bridge_server.engine import weights
from bridge_server.models import quantize

tiny_root = fx.tiny_root


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges where `path` is mapped into this process (Linux /proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and Path(parts[5]) == path.resolve():
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end))
    return out


def share_of_bytes_in(model: torch.nn.Module, ranges: list[tuple[int, int]]) -> float:
    total = inside = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        total += n
        if any(a <= p.data_ptr() and p.data_ptr() + n <= b for a, b in ranges):
            inside += n
    return inside / total


def test_a_single_safetensors_transformer_computes_from_the_files_mapping(tiny_root, tmp_path):
    from diffusers import FluxTransformer2DModel

    base = tiny_root / "FLUX.1-Fill-dev"
    model = FluxTransformer2DModel.from_pretrained(str(base), subfolder="transformer", local_files_only=True)
    single = tmp_path / "flux1-fill-dev.safetensors"  # a loose single file as ComfyUI users keep them
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(single))
    loaded = weights.load_single_file_transformer(single, base, dtype=torch.float32, in_channels=384)
    assert share_of_bytes_in(loaded, mapped_ranges(single)) == 1.0


def test_a_gguf_transformer_keeps_its_quantized_blocks_in_the_files_mapping(tiny_root, tmp_path):
    base = tiny_root / "FLUX.1-Fill-dev"
    gguf = tmp_path / "flux1-fill-dev-Q8_0.gguf"
    quantize.quantize(base, gguf, "Q8_0")
    loaded = weights.load_gguf_transformer(gguf, base, dtype=torch.float32, in_channels=384)
    quantized = [p for p in loaded.parameters() if type(p).__name__ == "GGUFParameter"]
    assert quantized  # the Linear weights stay Q8_0 blocks
    ranges = mapped_ranges(gguf)
    in_map = [p for p in quantized if any(a <= p.data_ptr() < b for a, b in ranges)]
    assert len(in_map) == len(quantized)
    # and they are the very blocks diffusers' own (copying) reader gives
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    copied = load_gguf_checkpoint(str(gguf))
    from bridge_server.engine.diffusers_adapter import read_gguf

    mapped = read_gguf(str(gguf))
    assert mapped.keys() == copied.keys()
    assert all(torch.equal(mapped[k].data, copied[k].data) for k in copied)
    assert all(getattr(mapped[k], "quant_type", None) == getattr(copied[k], "quant_type", None) for k in copied)
