"""Where the weights live and what is installed (verify.py checks the files, pull.py downloads them).

The layout mirrors the two Hugging Face repositories, so a folder copied from another machine or a hub cache works:

    <root>/FLUX.1-Fill-dev/          diffusers folder of black-forest-labs/FLUX.1-Fill-dev (gated, non-commercial)
    <root>/ACE_Plus/portrait/comfyui_portrait_lora64.safetensors       ali-vilab/ACE_Plus
    <root>/ACE_Plus/subject/comfyui_subject_lora16.safetensors
    <root>/ACE_Plus/local_editing/comfyui_local_lora16.safetensors
    <root>/ACE_Plus/ace_plus_fft.safetensors                          optional, 23.8 GB, only for `instruct`
    <root>/annotators/contour.safetensors   optional: the `contour` structure mode (converted, see below)
    <root>/annotators/depth.safetensors     optional: the `depth` structure mode

The two annotators are the authors' own (ModelScope `iic/scepter_annotator`, `ANNOTATOR_SOURCES`), published
there only as pickled torch checkpoints. `python -m bridge_server.engine.annotators.convert` turns them into
safetensors once, offline, and writes `annotators.json` (size and SHA-256 of each converted file, the source
file's SHA-256). `models pull --annotators` downloads the converted files and that manifest from
`ANNOTATOR_REPO` (ACE_BRIDGE_ANNOTATOR_REPO overrides it) and checks each file against it.

The engine and the tiny test-model builder both use `ModelLayout`, so the paths are written down once. The CLI
(`ace-bridge models list|pull|verify|path`) wires the functions below; they print nothing themselves except
through the `echo` callable they are given.
"""

from __future__ import annotations

import os
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
ANNOTATOR_DIR = "annotators"
ANNOTATOR_FILES: dict[str, str] = {"contour": "contour.safetensors", "depth": "depth.safetensors"}
ANNOTATOR_MANIFEST = "annotators.json"
#: Where the authors' pickled originals are (ModelScope), as their model_zoo.yaml names them.
ANNOTATOR_SOURCE_REPO = "iic/scepter_annotator"
ANNOTATOR_SOURCES: dict[str, str] = {
    "contour": "annotator/ckpts/informative_drawing_contour_style.pth",
    "depth": "annotator/ckpts/dpt_hybrid-midas-501f0c75.pt",
}
#: The Hugging Face repository for the converter's output (contour/depth.safetensors + annotators.json), to be
#: filled by the maintainers running convert.py on the authors' files; until then convert locally or pull --from.
ANNOTATOR_REPO = "ace-bridge/scepter-annotators-safetensors"
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

    @property
    def annotators(self) -> Path:
        return self.root / ANNOTATOR_DIR

    def annotator(self, name: str) -> Path:
        return self.annotators / ANNOTATOR_FILES[name]

    def has_annotator(self, name: str) -> bool:
        return self.annotator(name).is_file()

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
            "used_for": "instruct, fft_* tasks",
        }
    )
    for name in ANNOTATOR_FILES:
        path = layout.annotator(name)
        rows.append(
            {
                "name": f"{name} annotator",
                "path": str(path),
                "installed": path.is_file(),
                "bytes": _size(path),
                "required": False,
                "used_for": f"local_edit / fft_control mode {name}",
            }
        )
    return rows
