"""`ace-bridge models find [DIR...]`: the weights people already have, recognised by their tensors, not their names.

Where it looks: the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub), every DIR given, and
any ComfyUI installation among or under them (`models/diffusion_models` = `models/unet`, `models/text_encoders` =
`models/clip`, `models/vae`, `models/loras`; GGUF files in `unet`). Only headers are read (safetensors JSON header,
GGUF tensor table), so a scan of many GB takes seconds.

How a file is told apart (shared/reference/consumer_gpus.md):
  FLUX transformer   img_in / x_embedder input channels: 384 FLUX.1-Fill, 448 ACE++ FFT, 64 FLUX.1-dev; BFL or
                     diffusers keys; bf16/fp16/fp32/fp8 by the big matrices' dtype, GGUF by their GGML type
  LoRA               lora_down/lora_up (kohya) or lora_A/lora_B keys; an ACE++ LoRA has the authors' module set
                     (double blocks qkv/proj/mlp/mod, single blocks linear1/linear2/modulation). Which ACE++ task:
                     rank 64 is the portrait LoRA; subject and local are both rank 16 over the same modules, so the
                     file name (subject / local) decides, and the table says so.
  T5-XXL, CLIP-L     HF text-model keys (encoder.block.N / text_model.encoder.layers.N), width 4096 / 768
  FLUX VAE           encoder/decoder conv keys with 16 latent channels
  diffusers folder   model_index.json naming FluxFillPipeline (the HF cache snapshot of FLUX.1-Fill-dev)

`record` writes the choice into the model root, so `serve` uses it: the base folder, LoRAs and FFT file are linked
into the layout `ModelLayout` expects (symlinks; nothing is copied), and `selection.json` lists every transformer file
(GGUF and fp8 included) the engine's tier choice may load.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bridge_server.models import assemble
from bridge_server.models.layout import ACE_DIR, BASE_DIR, FFT_FILE, LORA_FILES, ModelLayout

SELECTION_FILE = "selection.json"
GGUF_DIR = "gguf"  # where `models quantize` writes by default, inside the model root
SUFFIXES = (".safetensors", ".sft", ".gguf")
COMFY_KINDS = {
    "diffusion_models": "transformer",
    "unet": "transformer",
    "text_encoders": "text",
    "clip": "text",
    "vae": "vae",
    "loras": "lora",
    "checkpoints": "transformer",
}
IN_CHANNELS = {384: "fill", 448: "fft", 64: "dev"}
ACE_LORA_MODULES = (
    "img_attn_qkv",
    "img_attn_proj",
    "img_mlp_0",
    "img_mlp_2",
    "img_mod_lin",
    "txt_attn_qkv",
    "txt_attn_proj",
    "txt_mlp_0",
    "txt_mlp_2",
    "txt_mod_lin",
    "linear1",
    "linear2",
    "modulation_lin",
)
_DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}


class FindError(Exception):
    """A file that is not what its name or folder says, or an unreadable one."""


@dataclass
class Found:
    path: str
    kind: str  # transformer | lora | t5 | clip | vae | diffusers | unknown
    model: str | None = None  # transformer: fill | fft | dev; lora: portrait | subject | local | flux
    dtype: str | None = None  # bf16 | fp16 | fp32 | fp8 | Q8_0 | Q4_K ...
    layout: str | None = None  # bfl | diffusers (transformers)
    size: int = 0
    rank: int | None = None
    note: str = ""

    def label(self) -> str:
        what = {
            "transformer": f"FLUX {self.model} transformer",
            "lora": f"{self.model} LoRA",
            "diffusers": f"diffusers folder ({self.model})",
        }.get(self.kind, self.kind)
        return what + (f" r{self.rank}" if self.rank else "")


# ------------------------------------------------------------------------------------------------ reading headers
def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise FindError(f"{path}: truncated (no safetensors header)")
        (length,) = struct.unpack("<Q", raw)
        if length <= 0 or length > min(path.stat().st_size - 8, 100 * 2**20):
            raise FindError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(length))
        except ValueError as exc:
            raise FindError(f"{path}: unreadable safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return {k: (tuple(v["shape"]), _DTYPES.get(v["dtype"], v["dtype"].lower())) for k, v in header.items()}


def _gguf_header(path: Path) -> dict[str, Any]:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise FindError("reading GGUF files needs the gguf package: pip install gguf") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure: not a GGUF file
        raise FindError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    return {
        t.name: (tuple(int(x) for x in reversed(t.shape.tolist())), gguf.GGMLQuantizationType(t.tensor_type).name)
        for t in reader.tensors
    }


def _strip(key: str) -> str:
    for prefix in ("model.diffusion_model.", "diffusion_model.", "transformer."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _main_dtype(tensors: dict[str, Any]) -> str:
    """The dtype of the big matrices (small ones stay F32 in GGUF and fp8 files)."""
    counts: dict[str, int] = {}
    for shape, dtype in tensors.values():
        if len(shape) == 2:
            n = 1
            for s in shape:
                n *= s
            counts[dtype] = counts.get(dtype, 0) + n
    return max(counts, key=lambda k: counts[k]) if counts else "?"


def classify(tensors: dict[str, tuple[tuple[int, ...], str]], name: str = "") -> dict[str, Any]:
    """What a set of tensors is (kind, model, dtype, layout, rank, note), from shapes and keys only."""
    keys = {_strip(k): v for k, v in tensors.items()}
    lower = name.lower()
    for key in ("img_in.weight", "x_embedder.weight"):
        if key in keys:
            shape = keys[key][0]
            channels = shape[1] if len(shape) == 2 else None
            model = IN_CHANNELS.get(channels or -1)
            note = "" if model else f"{channels} input channels: not a FLUX.1 Fill/dev or ACE++ FFT transformer"
            return {
                "kind": "transformer",
                "model": model or f"unknown-{channels}",
                "dtype": _main_dtype(keys),
                "layout": "bfl" if key == "img_in.weight" else "diffusers",
                "note": note,
            }
    downs = [k for k in keys if k.endswith((".lora_down.weight", ".lora_A.weight"))]
    if downs:
        ranks = sorted({keys[k][0][0] for k in downs})
        rank = ranks[-1]
        modules = {k.rsplit(".lora_", 1)[0] for k in downs}
        flux = any("double_blocks" in m or "transformer_blocks" in m for m in modules)
        ace = flux and all(any(m.endswith(s) for m in modules) for s in ACE_LORA_MODULES)
        if not flux:
            return {
                "kind": "lora",
                "model": "other",
                "rank": rank,
                "dtype": _main_dtype(keys),
                "note": "not a FLUX LoRA",
            }
        if not ace:
            return {
                "kind": "lora",
                "model": "flux",
                "rank": rank,
                "dtype": _main_dtype(keys),
                "note": "a FLUX LoRA, not in the ACE++ module set",
            }
        if rank == 64:
            return {"kind": "lora", "model": "portrait", "rank": rank, "dtype": _main_dtype(keys)}
        which = "subject" if "subject" in lower else "local" if "local" in lower else None
        note = (
            "ACE++ rank-16 LoRA: subject and local have the same shapes; told apart by the file name"
            if which
            else "ACE++ rank-16 LoRA (subject or local: the tensors cannot tell; rename it to say which)"
        )
        return {
            "kind": "lora",
            "model": which or "subject-or-local",
            "rank": rank,
            "dtype": _main_dtype(keys),
            "note": note,
        }
    if any(k.startswith("encoder.block.") for k in keys) or "shared.weight" in keys:
        width = keys.get("shared.weight", ((0, 0), ""))[0][-1]
        return {"kind": "t5", "model": "t5-xxl" if width == 4096 else f"t5-{width}", "dtype": _main_dtype(keys)}
    clip = {k.removeprefix("text_model."): v for k, v in keys.items()}  # ComfyUI files keep the prefix
    if any(k.startswith("encoder.layers.") for k in clip) and "embeddings.token_embedding.weight" in clip:
        emb = clip["embeddings.token_embedding.weight"][0]
        return {"kind": "clip", "model": "clip-l" if emb[-1] == 768 else f"clip-{emb[-1]}", "dtype": _main_dtype(keys)}
    for key in ("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"):
        if key in tensors:
            latent = tensors[key][0][1]
            return {
                "kind": "vae",
                "model": "flux-ae" if latent == 16 else f"vae-{latent}ch",
                "dtype": _main_dtype(keys),
            }
    return {"kind": "unknown", "note": "not a FLUX transformer, LoRA, text encoder or VAE"}


def identify(path: Path) -> Found:
    """One file or diffusers folder, identified by its tensors. Raises FindError for unreadable files."""
    path = Path(path)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise FindError(f"{path}: a folder without model_index.json")
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        config = path / "transformer" / "config.json"
        channels = json.loads(config.read_text()).get("in_channels") if config.is_file() else None
        model = IN_CHANNELS.get(channels or -1, cls)
        return Found(
            str(path), "diffusers", model=model, dtype="bf16", layout="diffusers", size=_tree_size(path), note=cls
        )
    tensors = _gguf_header(path) if path.suffix == ".gguf" else _safetensors_header(path)
    info = classify(tensors, path.name)
    found = Found(str(path), size=path.stat().st_size, **info)
    expected = _name_says(path.name)
    if expected and expected != (found.kind, found.model) and found.kind != "unknown":
        said = " ".join(x for x in expected if x)
        found.note = (found.note + "; " if found.note else "") + f"its name says {said}, its tensors say otherwise"
    return found


def _name_says(name: str) -> tuple[str, str | None] | None:
    n = name.lower()
    if "fill" in n and "lora" not in n:
        return ("transformer", "fill")
    if "fft" in n:
        return ("transformer", "fft")
    return None


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------------------------------- scanning
def hf_cache_dirs() -> list[Path]:
    out = []
    if os.environ.get("HF_HUB_CACHE"):
        out.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]) / "hub")
    out.append(Path.home() / ".cache" / "huggingface" / "hub")
    return [p for i, p in enumerate(out) if p.is_dir() and p not in out[:i]]


def comfy_model_dirs(root: Path) -> list[Path]:
    """The model folders of a ComfyUI installation at `root` (the install folder or its models/ folder)."""
    models = root / "models" if (root / "models").is_dir() else root
    return [models / name for name in COMFY_KINDS if (models / name).is_dir()]


def _candidates(folder: Path, depth: int = 6) -> list[Path]:
    out: list[Path] = []
    if depth < 0 or not folder.is_dir():
        return out
    if (folder / "model_index.json").is_file():
        return [folder]
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for entry in entries:
        if entry.name.startswith(".") or entry.name == "blobs":
            continue
        if entry.is_dir():
            out += _candidates(entry, depth - 1)
        elif entry.suffix in SUFFIXES and entry.is_file():
            out.append(entry)
    return out


@dataclass
class Scan:
    found: list[Found] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    tokenizers: dict[str, str] = field(default_factory=dict)  # ComfyUI's CLIP/T5 tokenizer folders (assemble.py)


def scan(dirs: list[Path], *, hf_cache: bool = True) -> Scan:
    """Identify every weight file under the HF cache (optional) and `dirs` (ComfyUI installs recognised)."""
    roots: list[Path] = []
    tokenizers: dict[str, str] = {}
    for d in dirs:
        d = Path(d).expanduser()
        comfy = comfy_model_dirs(d)
        roots += comfy if comfy else [d]
        for name, folder in assemble.comfy_tokenizers(d).items():
            tokenizers.setdefault(name, folder)
    if hf_cache:
        roots += hf_cache_dirs()
    result = Scan(searched=[str(r) for r in roots], tokenizers=tokenizers)
    seen: set[Path] = set()
    for root in roots:
        for path in _candidates(root):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                result.found.append(identify(path))
            except (FindError, OSError, ValueError) as exc:
                result.problems.append(str(exc))
    return result


# -------------------------------------------------------------------------------------------- what tasks can run
TASK_PIECES = {
    "generate": [],
    "inpaint": [],
    "local_edit": ["local"],
    "reference_edit": ["subject"],
    "subject": ["subject"],
    "portrait": ["portrait"],
    "instruct": ["fft"],
}


def best(found: list[Found], tokenizers: dict[str, str] | None = None) -> dict[str, Any]:
    """The files to use: base (a diffusers folder, or single files + ComfyUI's tokenizers), each LoRA, the FFT,
    GGUF/fp8 alternatives."""
    pick: dict[str, Any] = {"transformers": {"fill": {}, "fft": {}}, "loras": {}, **(tokenizers or {})}
    for f in found:
        if f.kind == "diffusers" and f.model == "fill":
            pick.setdefault("base_folder", f.path)
        elif f.kind == "transformer" and f.model in ("fill", "fft"):
            pick["transformers"][f.model].setdefault(f.dtype or "?", f.path)
        elif f.kind == "lora" and f.model in ("portrait", "subject", "local"):
            pick["loras"].setdefault(f.model, f.path)
        elif f.kind in ("t5", "clip", "vae"):
            pick.setdefault(f.kind, f.path)
    return pick


def missing_for_tasks(pick: dict[str, Any]) -> dict[str, list[str]]:
    """Task -> what is still missing for it (empty: it can run)."""
    base: list[str] = []
    fill = pick["transformers"]["fill"]
    if not pick.get("base_folder"):
        if not fill:
            base.append("FLUX.1-Fill-dev transformer")
        for piece, label in (("t5", "T5-XXL text encoder"), ("clip", "CLIP-L text encoder"), ("vae", "FLUX VAE")):
            if not pick.get(piece):
                base.append(label)
        if not (pick.get("tokenizer") and pick.get("tokenizer_2")):
            base.append(
                "tokenizers (give the ComfyUI installation folder, which ships them, or a FLUX.1-Fill-dev "
                "diffusers folder; `models pull` fetches it)"
            )
    out = {}
    for task, pieces in TASK_PIECES.items():
        need = list(base)
        for piece in pieces:
            if piece == "fft" and not pick["transformers"]["fft"]:
                need.append("ACE++ FFT model")
            elif piece != "fft" and piece not in pick["loras"]:
                need.append(f"ACE++ {piece} LoRA")
        out[task] = need
    return out


def table(result: Scan) -> str:
    lines = [f"{'what':34} {'format':9} {'GB':>7}  path"]
    for f in sorted(result.found, key=lambda f: (f.kind, f.model or "", f.path)):
        lines.append(f"{f.label():34} {(f.dtype or ''):9} {f.size / 1e9:7.2f}  {f.path}")
        if f.note:
            lines.append(f"{'':34} note: {f.note}")
    for problem in result.problems:
        lines.append(f"unreadable: {problem}")
    pick = best(result.found, result.tokenizers)
    lines.append("")
    lines.append("tasks:")
    for task, need in missing_for_tasks(pick).items():
        lines.append(f"  {task:15} " + ("ready" if not need else "missing: " + ", ".join(need)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ recording
def record(result: Scan, root: Path) -> list[str]:
    """Make `serve --model ROOT` use what was found: link the base folder, LoRAs and FFT file into the layout
    (existing real files are kept), and write selection.json. Returns what was done, one line each."""
    layout = ModelLayout(Path(root))
    layout.root.mkdir(parents=True, exist_ok=True)
    pick = best(result.found, result.tokenizers)
    done = []

    def link(target: str, where: Path) -> None:
        if where.exists() and not where.is_symlink():
            done.append(f"kept {where} (a real file or folder is there)")
            return
        where.parent.mkdir(parents=True, exist_ok=True)
        if where.is_symlink():
            where.unlink()
        try:
            os.symlink(target, where, target_is_directory=Path(target).is_dir())
            done.append(f"linked {where} -> {target}")
        except OSError as exc:
            done.append(f"could not link {where} ({exc}); selection.json still records {target}")

    if pick.get("base_folder"):
        link(pick["base_folder"], layout.root / BASE_DIR)
    for name, path in pick["loras"].items():
        link(path, layout.root / ACE_DIR / LORA_FILES[name])
    fft = pick["transformers"]["fft"]
    fft_full = next((fft[d] for d in ("bf16", "fp16", "fp32", "fp8") if d in fft), None)
    if fft_full:
        link(fft_full, layout.root / ACE_DIR / FFT_FILE)
    if assemble.can_assemble(pick):
        # no diffusers folder, but every piece as single files: build one from them (configs shipped, offline)
        try:
            done += assemble.assemble(pick, layout.root / BASE_DIR)
        except (assemble.AssembleError, OSError, ValueError, KeyError) as exc:
            done.append(f"could not assemble {layout.root / BASE_DIR} from the single files ({exc})")
    selection = {"found": [asdict(f) for f in result.found], "pick": pick}
    (layout.root / SELECTION_FILE).write_text(json.dumps(selection, indent=1), encoding="utf-8")
    done.append(f"wrote {layout.root / SELECTION_FILE}")
    return done


def transformer_files(root: Path) -> dict[str, dict[str, str]]:
    """{"fill": {dtype: path}, "fft": {...}}: single-file and GGUF transformers recorded by `models find` or
    written by `models quantize` into ROOT/gguf. dtype is bf16/fp16/fp32/fp8 or a GGML type (Q8_0, Q4_K, ...)."""
    out: dict[str, dict[str, str]] = {"fill": {}, "fft": {}}
    selection = Path(root) / SELECTION_FILE
    if selection.is_file():
        try:
            pick = json.loads(selection.read_text(encoding="utf-8")).get("pick", {})
            for model, files in pick.get("transformers", {}).items():
                for dtype, path in files.items():
                    if model in out and Path(path).is_file():
                        out[model].setdefault(dtype, path)
        except (OSError, ValueError):
            pass
    folder = Path(root) / GGUF_DIR
    for path in sorted(folder.glob("*.gguf")) if folder.is_dir() else []:
        try:
            f = identify(path)
        except (FindError, OSError):
            continue
        if f.kind == "transformer" and f.model in out:
            out[f.model].setdefault(f.dtype or "?", str(path))
    return out
