"""`models verify`: read only the safetensors headers and check each file's tensors have the shapes ACE++ needs."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge_server.models.layout import ANNOTATOR_FILES, ANNOTATOR_MANIFEST, BASE_COMPONENTS, ModelLayout


class VerifyError(Exception):
    """A file is present but unreadable or has impossible shapes."""


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse only the JSON header (8-byte little-endian length + JSON): cheap even for a 24 GB file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise VerifyError(f"{path.name}: only .safetensors files are accepted (never pickled .bin/.pt/.ckpt)")
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise VerifyError(f"{path}: truncated (no safetensors header)")
        (length,) = struct.unpack("<Q", raw)
        if length <= 0 or length > min(size - 8, 100 * 2**20):
            raise VerifyError(f"{path}: bad safetensors header length {length} (truncated or not a safetensors file)")
        try:
            header = json.loads(fh.read(length))
        except ValueError as exc:
            raise VerifyError(f"{path}: unreadable safetensors header ({exc})") from exc
    data_len = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        if end > data_len or begin > end:
            raise VerifyError(f"{path}: tensor {key} lies beyond the end of the file (incomplete download?)")
    return header


def _shapes(header: dict[str, Any]) -> dict[str, list[int]]:
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _verify_lora(path: Path) -> str:
    shapes = _shapes(read_safetensors_header(path))
    downs = [k for k in shapes if k.endswith(".lora_down.weight")]
    if not downs or not all(k.startswith("lora_unet_") for k in downs):
        raise VerifyError(f"{path}: not a kohya-format ACE++ LoRA (no lora_unet_*.lora_down.weight keys)")
    ranks = {shapes[k][0] for k in downs}
    for k in downs:
        up = k.replace(".lora_down.", ".lora_up.")
        if up not in shapes or shapes[up][1] != shapes[k][0]:
            raise VerifyError(f"{path}: {up} is missing or its rank does not match {k}")
    return f"{len(downs)} modules, rank {'/'.join(str(r) for r in sorted(ranks))}"


def _verify_fft(path: Path) -> str:
    shapes = _shapes(read_safetensors_header(path))
    img_in = shapes.get("img_in.weight") or shapes.get("model.diffusion_model.img_in.weight")
    if img_in is None:
        raise VerifyError(f"{path}: no img_in.weight; not a BFL-layout FLUX transformer")
    if img_in[1] != 448:
        raise VerifyError(f"{path}: img_in takes {img_in[1]} channels; the ACE++ FFT model takes 448")
    return f"{len(shapes)} tensors, width {img_in[0]}"


def _verify_annotator(kind: str) -> Callable[[Path], str]:
    def check(path: Path) -> str:
        header = read_safetensors_header(path)
        meta = header.get("__metadata__") or {}
        if meta.get("ace_bridge_annotator") != kind:
            raise VerifyError(f"{path}: not a converted {kind} annotator (no ace_bridge_annotator={kind} metadata)")
        config = json.loads(meta.get("config", "{}"))
        manifest_path = path.parent / ANNOTATOR_MANIFEST
        if manifest_path.is_file():
            entry = json.loads(manifest_path.read_text(encoding="utf-8")).get(kind) or {}
            if entry.get("bytes") != path.stat().st_size:
                raise VerifyError(
                    f"{path}: {path.stat().st_size} bytes, {ANNOTATOR_MANIFEST} says {entry.get('bytes')}"
                )
        return f"{len(_shapes(header))} tensors, {', '.join(f'{k} {v}' for k, v in config.items())}"

    return check


def _verify_base(folder: Path) -> str:
    if not (folder / "model_index.json").is_file():
        raise VerifyError(f"{folder}: no model_index.json; not a diffusers folder")
    missing = [c for c in BASE_COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise VerifyError(f"{folder}: missing components {', '.join(missing)}")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    if config.get("in_channels") != 384:
        raise VerifyError(f"{folder}: transformer in_channels {config.get('in_channels')}; FLUX.1-Fill-dev has 384")
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise VerifyError(f"{folder}: no .safetensors weights")
    pickled = [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]
    if pickled:
        raise VerifyError(f"{folder}: pickled weights are refused ({pickled[0].name}); use safetensors")
    tensors = sum(len(_shapes(read_safetensors_header(p))) for p in files)
    return f"{len(files)} safetensors files, {tensors} tensors"


def verify(root: Path) -> list[dict[str, Any]]:
    """`ace-bridge models verify`: per item {name, path, ok, detail}; missing optional items are ok=None."""
    layout = ModelLayout(Path(root))
    checks: list[tuple[str, Path, Callable[[Path], str], bool]] = [("base", layout.base, _verify_base, True)]
    checks += [(f"{n} LoRA", p, _verify_lora, True) for n, p in layout.loras.items()]
    checks.append(("FFT", layout.fft, _verify_fft, False))
    checks += [
        (f"{kind} annotator", layout.annotator(kind), _verify_annotator(kind), False) for kind in ANNOTATOR_FILES
    ]
    results = []
    for name, path, check, required in checks:
        if not path.exists():
            results.append({"name": name, "path": str(path), "ok": False if required else None, "detail": "missing"})
            continue
        try:
            results.append({"name": name, "path": str(path), "ok": True, "detail": check(path)})
        except (VerifyError, OSError, KeyError, ValueError) as exc:
            results.append({"name": name, "path": str(path), "ok": False, "detail": str(exc)})
    return results
