"""Convert the authors' pickled annotator checkpoints to safetensors, once, offline.

    python -m bridge_server.engine.annotators.convert \\
        --contour informative_drawing_contour_style.pth --depth dpt_hybrid-midas-501f0c75.pt [--out DIR]

The sources are ModelScope `iic/scepter_annotator` (`annotator/ckpts/...`, see models.layout.ANNOTATOR_SOURCES).
Each checkpoint is read with `torch.load(weights_only=True)` (tensors and plain containers only; no code runs),
its keys are mapped onto our networks (weights.map_authors_keys; any key without a place stops the conversion),
the network is built from the shapes and loaded strictly, and the result is written as `<kind>.safetensors` with
the sizes and the source's SHA-256 in its metadata. The written file is then loaded back through the daemon's own
loader and compared tensor for tensor. `annotators.json` beside the files records each file's size and SHA-256,
which `models pull --annotators` checks. The daemon itself never unpickles anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bridge_server.engine.annotators import weights
from bridge_server.models.layout import ANNOTATOR_FILES, ANNOTATOR_MANIFEST, ModelLayout, default_model_root

# torch.hub's convention, which the MiDaS release follows: `name-<first 8 hex digits of the SHA-256>.pt`.
_HUB_HASH = re.compile(r"-([a-f0-9]{8,})\.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _authors_state(source: Path) -> dict[str, torch.Tensor]:
    try:
        data: Any = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corrupt file is one answer for the user
        raise weights.ConversionError(f"{source}: not a plain torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict) and "optimizer" in data and "model" in data:
        data = data["model"]  # MiDaS' BaseModel.load does the same
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise weights.ConversionError(f"{source}: expected a state dict of tensors")
    return data


def convert(kind: str, source: Path, out_dir: Path, *, check_name_hash: bool = True) -> dict[str, Any]:
    """Convert one checkpoint; returns its manifest entry. Raises ConversionError with the reason.

    `check_name_hash`: a name carrying a hash (`-501f0c75.`, torch.hub's rule, which MiDaS' hub loader checks)
    must match the start of the file's SHA-256."""
    if kind not in weights.KINDS:
        raise weights.ConversionError(f"unknown annotator {kind!r}; one of {', '.join(weights.KINDS)}")
    from safetensors.torch import save_file

    source = Path(source)
    source_hash = sha256(source)
    pinned = _HUB_HASH.search(source.name)
    if check_name_hash and pinned and not source_hash.startswith(pinned.group(1)):
        raise weights.ConversionError(
            f"{source.name}: its SHA-256 starts {source_hash[:8]}, its name says {pinned.group(1)} (a damaged copy?"
            " --skip-name-hash converts it anyway; the result is still checked key by key)"
        )
    mapped = weights.map_authors_keys(kind, _authors_state(source))
    net = weights.build(kind, weights.infer_config(kind, mapped))
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise weights.ConversionError(f"{kind}: the checkpoint does not fit the network: {exc}") from exc
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ANNOTATOR_FILES[kind]
    meta = weights.annotator_metadata(kind, net, source=source.name, source_sha256=source_hash)
    save_file(tensors, str(target), metadata=meta)
    back = weights.load_annotator(kind, target).state_dict()
    if set(back) != set(tensors) or any(not torch.equal(back[k], tensors[k]) for k in tensors):
        target.unlink()
        raise weights.ConversionError(f"{target}: the written file does not read back equal; removed")
    entry = {
        "file": target.name,
        "bytes": target.stat().st_size,
        "sha256": sha256(target),
        "source": source.name,
        "source_sha256": source_hash,
        "config": json.loads(meta["config"]),
    }
    manifest_path = out_dir / ANNOTATOR_MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    manifest[kind] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge_server.engine.annotators.convert",
        description="Convert the ACE++ authors' pickled annotator checkpoints to safetensors (once, offline).",
    )
    parser.add_argument("--contour", type=Path, help="informative_drawing_contour_style.pth")
    parser.add_argument("--depth", type=Path, help="dpt_hybrid-midas-501f0c75.pt")
    parser.add_argument("--out", type=Path, help="output folder (default: the model folder's annotators/)")
    parser.add_argument(
        "--skip-name-hash", action="store_true", help="convert even when the file's SHA-256 differs from its name's"
    )
    args = parser.parse_args(argv)
    jobs = [(kind, path) for kind, path in (("contour", args.contour), ("depth", args.depth)) if path is not None]
    if not jobs:
        parser.error("give --contour and/or --depth")
    out = args.out or ModelLayout(default_model_root()).annotators
    for kind, path in jobs:
        try:
            entry = convert(kind, path, out, check_name_hash=not args.skip_name_hash)
        except (weights.ConversionError, OSError) as exc:
            print(f"convert: {exc}", file=sys.stderr)
            return 1
        print(f"{kind}: {out / entry['file']} ({entry['bytes']} bytes, sha256 {entry['sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
