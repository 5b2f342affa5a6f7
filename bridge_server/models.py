"""Where the weights live, what is installed, download with progress, and verification.

The layout mirrors the two Hugging Face repositories, so a folder copied from another machine or a hub cache works:

    <root>/FLUX.1-Fill-dev/          diffusers folder of black-forest-labs/FLUX.1-Fill-dev (gated, non-commercial)
    <root>/ACE_Plus/portrait/comfyui_portrait_lora64.safetensors       ali-vilab/ACE_Plus
    <root>/ACE_Plus/subject/comfyui_subject_lora16.safetensors
    <root>/ACE_Plus/local_editing/comfyui_local_lora16.safetensors
    <root>/ACE_Plus/ace_plus_fft.safetensors                          optional, 23.8 GB, only for `instruct`

The engine and the tiny test-model builder both use `ModelLayout`, so the paths are written down once. The CLI
(`ace-bridge models list|pull|verify|path`) wires the functions below; they print nothing themselves except
through the `echo` callable they are given.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_REPO = "black-forest-labs/FLUX.1-Fill-dev"
ACE_REPO = "ali-vilab/ACE_Plus"
BASE_DIR = "FLUX.1-Fill-dev"
ACE_DIR = "ACE_Plus"
LORA_FILES: dict[str, str] = {
    "portrait": "portrait/comfyui_portrait_lora64.safetensors",
    "subject": "subject/comfyui_subject_lora16.safetensors",
    "local": "local_editing/comfyui_local_lora16.safetensors",
}
FFT_FILE = "ace_plus_fft.safetensors"
# The diffusers folder without the single-file duplicate `flux1-fill-dev.safetensors` (23.8 GB we do not need).
BASE_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "transformer/*",
    "vae/*",
]
BASE_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")

DOWNLOAD_GB_WITHOUT_FFT = 35
DOWNLOAD_GB_WITH_FFT = 58
LICENCE_NOTICE = (
    "FLUX.1-Fill-dev is a gated model under the FLUX.1 [dev] Non-Commercial License "
    "(https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md): accept it on its Hugging Face "
    "page and log in (HF_TOKEN or `hf auth login`) before pulling. The ACE++ weights are a post-training of it, "
    "so the same terms apply to them."
)


@dataclass(frozen=True)
class ModelLayout:
    """All model paths under one root."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / BASE_DIR

    @property
    def ace(self) -> Path:
        return self.root / ACE_DIR

    def lora(self, name: str) -> Path:
        return self.ace / LORA_FILES[name]

    @property
    def loras(self) -> dict[str, Path]:
        return {name: self.lora(name) for name in LORA_FILES}

    @property
    def fft(self) -> Path:
        return self.ace / FFT_FILE

    def has_base(self) -> bool:
        return (self.base / "model_index.json").is_file() and all((self.base / c).is_dir() for c in BASE_COMPONENTS)

    def has_fft(self) -> bool:
        return self.fft.is_file()

    def missing(self) -> list[str]:
        """Human-readable names of what is not installed (the FFT is optional and listed last)."""
        out = []
        if not self.has_base():
            out.append(f"{BASE_DIR} (base model, {BASE_REPO})")
        out += [f"{ACE_DIR}/{rel} ({name} LoRA)" for name, rel in LORA_FILES.items() if not self.lora(name).is_file()]
        if not self.has_fft():
            out.append(f"{ACE_DIR}/{FFT_FILE} (optional, for instruct)")
        return out


def default_model_root() -> Path:
    """ACE_BRIDGE_MODELS, else the per-user data folder (platformdirs) + /models."""
    env = os.environ.get("ACE_BRIDGE_MODELS")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("ace-bridge", appauthor=False)) / "models"


def model_path(root: Path | None = None) -> Path:
    """`ace-bridge models path`: the root that `serve` would use."""
    return Path(root) if root is not None else default_model_root()


# ----------------------------------------------------------------------------------------------------------------
# list


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def list_models(root: Path) -> list[dict[str, Any]]:
    """`ace-bridge models list`: one row per item, {name, path, installed, bytes, required, used_for}."""
    layout = ModelLayout(Path(root))
    rows = [
        {
            "name": "base",
            "path": str(layout.base),
            "installed": layout.has_base(),
            "bytes": _size(layout.base),
            "required": True,
            "used_for": "all tasks (generate, inpaint without a LoRA)",
        }
    ]
    uses = {"portrait": "portrait, reference_edit (face)", "subject": "subject, reference_edit", "local": "local_edit"}
    for name, path in layout.loras.items():
        rows.append(
            {
                "name": f"{name} LoRA",
                "path": str(path),
                "installed": path.is_file(),
                "bytes": _size(path),
                "required": True,
                "used_for": uses[name],
            }
        )
    rows.append(
        {
            "name": "FFT",
            "path": str(layout.fft),
            "installed": layout.has_fft(),
            "bytes": _size(layout.fft),
            "required": False,
            "used_for": "instruct",
        }
    )
    return rows


# ----------------------------------------------------------------------------------------------------------------
# verify


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


# ----------------------------------------------------------------------------------------------------------------
# pull


PROGRESS_FILE = ".download-progress.json"
#: A progress file older than this belongs to a pull that is no longer running.
PROGRESS_STALE_S = 60.0


def read_download_progress(root: Path) -> dict[str, Any] | None:
    """What a running `ace-bridge models pull` last wrote into `root`, or None (no pull, or a stale one)."""
    try:
        data = json.loads((Path(root) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or time.time() - float(data.get("updated", 0)) > PROGRESS_STALE_S:
        return None
    return data


def progress_bar_class(root: Path):
    """A tqdm class for huggingface_hub that also writes its position to `root`/.download-progress.json (at most
    twice a second), so the daemon and its control panel can show a pull that runs in another process."""
    from tqdm.auto import tqdm

    path = Path(root) / PROGRESS_FILE

    class ProgressToFile(tqdm):  # type: ignore[misc,valid-type]
        _last_write = 0.0

        def update(self, n=1):  # noqa: ANN001 - tqdm's signature
            result = super().update(n)
            now = time.time()
            if now - ProgressToFile._last_write >= 0.5 or (self.total and self.n >= self.total):
                ProgressToFile._last_write = now
                record = {"file": str(self.desc or ""), "done_bytes": int(self.n), "total_bytes": int(self.total or 0),
                          "updated": now}
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.write_text(json.dumps(record), encoding="utf-8")
                    os.replace(tmp, path)
                except OSError:
                    pass  # progress reporting must never break the download
            return result

    return ProgressToFile


class ConfirmationRequired(Exception):
    """Raised by `pull` without `confirm=True`; its message is the notice the user must read first."""


def pull_notice(with_fft: bool) -> str:
    size = DOWNLOAD_GB_WITH_FFT if with_fft else DOWNLOAD_GB_WITHOUT_FFT
    return (
        f"This downloads about {size} GB ({BASE_REPO} + the ACE++ LoRAs"
        + (" + the 23.8 GB FFT model" if with_fft else "")
        + f").\n{LICENCE_NOTICE}"
    )


def pull_plan(with_fft: bool) -> list[tuple[str, list[str] | None, str | None]]:
    """(repo, allow_patterns, single filename) in download order; pure, so it is tested without the network."""
    plan: list[tuple[str, list[str] | None, str | None]] = [(BASE_REPO, BASE_PATTERNS, None)]
    plan += [(ACE_REPO, None, rel) for rel in LORA_FILES.values()]
    if with_fft:
        plan.append((ACE_REPO, None, FFT_FILE))
    return plan


def pull(
    root: Path,
    *,
    with_fft: bool = False,
    confirm: bool = False,
    echo: Callable[[str], None] = print,
    token: str | None = None,
) -> ModelLayout:
    """`ace-bridge models pull [--fft] --yes`: download into the layout, resumable, with tqdm progress.

    Honours HF_HOME / HF_TOKEN / HF_HUB_OFFLINE through huggingface_hub. Files land directly in `root` (local_dir),
    so an interrupted download resumes from the partial file on the next call.
    """
    if not confirm:
        raise ConfirmationRequired(pull_notice(with_fft) + "\nRun again with the confirmation flag (--yes).")
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    layout = ModelLayout(Path(root))
    bar = progress_bar_class(layout.root)
    echo(pull_notice(with_fft))
    try:
        for repo, patterns, filename in pull_plan(with_fft):
            if filename is None:
                echo(f"Downloading {repo} -> {layout.base}")
                snapshot_download(repo, allow_patterns=patterns, local_dir=layout.base, token=token,
                                  tqdm_class=bar)
            else:
                echo(f"Downloading {repo}/{filename} -> {layout.ace / filename}")
                hf_hub_download(repo, filename, local_dir=layout.ace, token=token, tqdm_class=bar)
    except GatedRepoError as exc:
        raise RuntimeError(
            f"{BASE_REPO} is gated: accept its licence on huggingface.co and set HF_TOKEN ({exc.__class__.__name__})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RuntimeError(f"repository not found or not authorised: {exc}") from exc
    return layout
