"""`ace-bridge models quantize`: a FLUX transformer (Fill, dev or the ACE++ FFT) as a GGUF file, with the `gguf`
package, so it runs on cards that cannot hold 23.8 GB of bf16 weights (the daemon loads it through diffusers'
GGUFQuantizationConfig; engine tier `gguf-*`).

Which types: the `gguf` package (0.19) can WRITE Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, BF16 and F16; its K-quant writers
(Q2_K..Q6_K) raise NotImplementedError, so K files come from elsewhere (the daemon still LOADS them: diffusers
dequantizes every K type in torch, on CPU too). Like ComfyUI-GGUF's converter, only the big 2-D matrices are
quantized; biases, norms and any matrix whose row length is not a multiple of the type's block stay F32.

The keys are written as they are in the source (a diffusers folder stays diffusers-keyed, the FFT's single file
keeps the authors' BFL layout), architecture "flux". Resumable: each quantized tensor is kept in `OUT.parts/` as
.npy until the file is assembled (memory-mapped then, so host RAM holds about one tensor), and a rerun with the same
source and type skips the finished ones. Verified by reading the
file back: every tensor present with its shape, and its dequantized values within the type's error bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WRITABLE = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16", "F16")
# Worst |error| / max|tensor| accepted when reading back: about one quantization step of each type.
ERROR_BOUND = {"Q8_0": 0.01, "Q5_1": 0.05, "Q5_0": 0.08, "Q4_1": 0.1, "Q4_0": 0.15, "BF16": 0.01, "F16": 0.001}
MIN_QUANT_ELEMENTS = 1024  # smaller matrices stay F32 (ComfyUI-GGUF keeps small tensors unquantized too)


class QuantizeError(Exception):
    """A source that is not a FLUX transformer, an unknown type, or a file that did not read back."""


@dataclass
class QuantizeReport:
    out: Path
    qtype: str
    tensors: int
    quantized: int
    resumed: int
    bytes_in: int
    bytes_out: int
    max_error: float

    def line(self) -> str:
        return (
            f"{self.out}: {self.qtype}, {self.quantized}/{self.tensors} tensors quantized "
            f"({self.resumed} resumed), {self.bytes_in / 2**30:.2f} GiB -> {self.bytes_out / 2**30:.2f} GiB, "
            f"read back OK (worst relative error {self.max_error:.4f})"
        )


def source_files(source: Path) -> list[Path]:
    """The safetensors file(s) of a transformer: a single file, a `transformer/` folder, or a model folder."""
    source = Path(source)
    if source.is_file():
        return [source]
    for folder in (source / "transformer", source):
        files = sorted(folder.glob("*.safetensors"))
        if files:
            return files
    raise QuantizeError(
        f"{source}: no .safetensors transformer found (give a file, a transformer/ folder, or a diffusers model folder)"
    )


def _fingerprint(files: list[Path], qtype: str) -> str:
    h = hashlib.sha256(qtype.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _keys(files: list[Path]) -> list[tuple[Path, str]]:
    from safetensors import safe_open

    out = []
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            out += [(f, k) for k in handle.keys()]  # noqa: SIM118 - safe_open has no __iter__
    return out


def _is_flux(names: list[str]) -> bool:
    return any(".img_attn." in n or "transformer_blocks." in n for n in names) and any(
        "img_in." in n or "x_embedder." in n for n in names
    )


def _quantizable(name: str, shape: tuple[int, ...], qtype: str) -> bool:
    import gguf

    if len(shape) != 2 or not name.endswith(".weight") or int(np.prod(shape)) < MIN_QUANT_ELEMENTS:
        return False
    if qtype == "F16":
        return True
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return shape[-1] % block == 0


def quantize(
    source: Path,
    out: Path,
    qtype: str = "Q8_0",
    *,
    progress: Callable[..., Any] | None = None,
    stop_after: int | None = None,
) -> QuantizeReport:
    """Write `out` (GGUF) from `source`. `progress`: a tqdm-like class (total=, desc=, unit=) or None.
    `stop_after` (tests): stop after that many newly quantized tensors, leaving the parts for a resume."""
    import gguf
    import torch
    from safetensors import safe_open

    qtype = qtype.upper()
    if qtype not in WRITABLE:
        raise QuantizeError(
            f"cannot write {qtype}: the gguf package writes {', '.join(WRITABLE)} (K types such "
            "as Q4_K are loaded from existing files, not written)"
        )
    files = source_files(source)
    keys = _keys(files)
    names = [k for _, k in keys]
    if not _is_flux(names):
        raise QuantizeError(f"{source}: not a FLUX transformer (no img_in/x_embedder and attention blocks)")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    fingerprint = _fingerprint(files, qtype)
    manifest_path = parts / "manifest.json"
    if parts.is_dir():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("fingerprint") != fingerprint:
            shutil.rmtree(parts)  # another source or type: start over
    parts.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(
        json.dumps({"fingerprint": fingerprint, "source": [str(f) for f in files], "qtype": qtype})
    )
    bar = progress(total=len(keys), desc=f"quantize {qtype}", unit="tensor") if progress else None
    resumed = newly = quantized = 0
    bytes_in = 0
    handles = {f: safe_open(str(f), framework="pt") for f in files}
    kinds: list[Any] = []
    try:
        for index, (f, name) in enumerate(keys):
            part = parts / f"{index:05d}.npy"
            tensor = handles[f].get_tensor(name)
            bytes_in += tensor.numel() * tensor.element_size()
            shape = tuple(tensor.shape)
            if _quantizable(name, shape, qtype):
                quantized += 1
                kinds.append(gguf.GGMLQuantizationType[qtype])
            else:
                kinds.append(gguf.GGMLQuantizationType.F32)
            if part.is_file():
                resumed += 1
            else:
                array = tensor.to(torch.float32).numpy()
                if kinds[-1] == gguf.GGMLQuantizationType.F32:
                    data = array
                else:
                    data = array.astype(np.float16) if qtype == "F16" else gguf.quants.quantize(array, kinds[-1])
                tmp = part.with_name(part.stem + ".tmp.npy")
                np.save(tmp, data)
                os.replace(tmp, part)  # a part is there whole or not at all: safe to resume after a kill
                newly += 1
            if bar is not None:
                bar.update(1)
            if stop_after is not None and newly >= stop_after:
                raise KeyboardInterrupt(f"stopped after {newly} tensors (resume by running again)")
    finally:
        if bar is not None:
            bar.close()
        handles.clear()
    tmp_out = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp_out), arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(_file_type(qtype))
    for index, ((_f, name), kind) in enumerate(zip(keys, kinds)):
        data = np.load(parts / f"{index:05d}.npy", mmap_mode="r")  # memory-mapped: the writer streams them out
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    worst = verify_gguf(tmp_out, files, qtype)
    os.replace(tmp_out, out)
    shutil.rmtree(parts, ignore_errors=True)
    return QuantizeReport(
        out=out,
        qtype=qtype,
        tensors=len(keys),
        quantized=quantized,
        resumed=resumed,
        bytes_in=bytes_in,
        bytes_out=out.stat().st_size,
        max_error=worst,
    )


def _file_type(qtype: str) -> int:
    import gguf

    return int(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}", gguf.LlamaFileType.ALL_F32))


def verify_gguf(path: Path, sources: list[Path], qtype: str) -> float:
    """Read `path` back: every source tensor there with its shape; dequantized values within the type's bound.
    Returns the worst error relative to each tensor's largest magnitude."""
    import gguf
    import torch
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(path))
    got = {t.name: t for t in reader.tensors}
    worst = 0.0
    for f in sources:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                if name not in got:
                    raise QuantizeError(f"{path}: tensor {name} missing after writing")
                t = got.pop(name)
                source = handle.get_tensor(name).to(torch.float32).numpy()
                values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(source.shape)
                scale = float(np.abs(source).max()) or 1.0
                error = float(np.abs(values - source).max()) / scale
                bound = ERROR_BOUND.get(gguf.GGMLQuantizationType(t.tensor_type).name, 1e-6)
                if error > bound:
                    raise QuantizeError(f"{path}: {name} reads back with relative error {error:.4f} > {bound}")
                worst = max(worst, error)
    if got:
        raise QuantizeError(f"{path}: unexpected tensors {sorted(got)[:3]}")
    return worst


def gguf_summary(path: Path) -> dict[str, Any]:
    """Tensor names with their shapes (logical, row-major) and GGML types, without reading the data."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {
        t.name: (tuple(int(x) for x in reversed(t.shape.tolist())), gguf.GGMLQuantizationType(t.tensor_type).name)
        for t in reader.tensors
    }
    arch = None
    field = reader.fields.get("general.architecture")
    if field is not None:
        arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return {"arch": arch, "tensors": tensors}
