"""A painter with only a ComfyUI installation: the Fill transformer as one BFL-keyed file in models/unet, CLIP-L and
T5 in models/clip, FLUX's `ae.safetensors` (the authors' LDM keys) in models/vae, the ACE++ LoRAs, and the tokenizers
ComfyUI ships in comfy/. `models find` recognises them, `record` assembles the base folder from them offline, and
`serve`'s engine runs jobs through them with the same picture as from the downloaded diffusers folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import engine_fixtures as fx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob
from bridge_server.engine.convert import diffusers_to_bfl
from bridge_server.models import assemble, find
from bridge_server.models.layout import ModelLayout

tiny_root = fx.tiny_root


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))


def ldm_vae(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM/BFL keys of FLUX's ae.safetensors (test-side writer)."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in state.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", k)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{levels - 1 - int(m.group(1))}.block.", k)
        k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m.group(1))}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        if "mid_block.attentions.0." in k:
            head, rest = k.split("mid_block.attentions.0.")
            name, kind = rest.rsplit(".", 1)
            k = f"{head}mid.attn_1.{attn[name]}.{kind}"
            if value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention uses 1x1 convolutions
        out[k] = value
    return out


@pytest.fixture(scope="module")
def comfyui(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import FluxFillPipeline

    top = tmp_path_factory.mktemp("comfy") / "ComfyUI"
    layout = ModelLayout(tiny_root)
    pipe = FluxFillPipeline.from_pretrained(str(layout.base), local_files_only=True)
    models = top / "models"
    _save(diffusers_to_bfl(pipe.transformer.state_dict()), models / "unet" / "flux1-fill-dev.safetensors")
    _save(pipe.text_encoder.state_dict(), models / "clip" / "clip_l.safetensors")
    _save(pipe.text_encoder_2.state_dict(), models / "clip" / "t5xxl_fp16.safetensors")
    levels = len(pipe.vae.config.block_out_channels)
    _save(ldm_vae(pipe.vae.state_dict(), levels), models / "vae" / "ae.safetensors")
    (models / "loras").mkdir(parents=True)
    for name in ("portrait", "subject", "local"):
        shutil.copy(layout.lora(name), models / "loras" / layout.lora(name).name)
    # the tokenizers ComfyUI ships inside the program; its CLIP config says 8192 tokens (CLIP has 77 positions)
    shutil.copytree(layout.base / "tokenizer", top / "comfy" / "sd1_tokenizer")
    config = top / "comfy" / "sd1_tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 8192}))
    shutil.copytree(layout.base / "tokenizer_2", top / "comfy" / "text_encoders" / "t5_tokenizer")
    return top


def inpaint(task: str = "inpaint") -> EngineJob:
    mask = np.zeros((48, 64), np.uint8)
    mask[8:40, 16:48] = 255
    return EngineJob(
        task=task, prompt="{image} a red hat", seed=5, params={"steps": 2}, image=fx.rgba(64, 48), mask=mask
    )


def test_a_comfyui_folder_alone_runs_every_lora_task_like_the_downloaded_model(comfyui, tiny_root, tmp_path):
    result = find.scan([comfyui], hf_cache=False)
    kinds = {Path(f.path).name: (f.kind, f.model) for f in result.found}
    assert kinds["ae.safetensors"] == ("vae", "flux-ae") and kinds["clip_l.safetensors"][0] == "clip"
    assert kinds["t5xxl_fp16.safetensors"][0] == "t5" and kinds["flux1-fill-dev.safetensors"] == ("transformer", "fill")
    assert set(result.tokenizers) == {"tokenizer", "tokenizer_2"}
    table = find.table(result)
    for task in ("inpaint", "local_edit", "reference_edit", "portrait"):
        assert f"  {task:15} ready" in table
    assert "instruct" in table and "ACE++ FFT model" in table  # honest: no FFT file in this folder

    root = tmp_path / "model"
    root.mkdir()
    (root / "TINY_MODEL.json").write_text("{}")  # tiny random weights: allowed on the CPU
    done = find.record(result, root)
    assert any(line.startswith("assembled") for line in done), done
    base = root / "FLUX.1-Fill-dev"
    assert (base / assemble.ASSEMBLED_FILE).is_file() and not assemble.has_transformer_weights(base)
    assert json.loads((base / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 77

    from_files = AcePlusEngine(root, t5_max_length=16, idle_unload_s=None)
    downloaded = AcePlusEngine(tiny_root, t5_max_length=16, idle_unload_s=None)
    try:
        assert "local_edit" in from_files.available_tasks() and "instruct" not in from_files.available_tasks()
        for task in ("inpaint", "local_edit"):
            ours = from_files.run(inpaint(task), lambda *_: None, lambda: False).rgb
            theirs = downloaded.run(inpaint(task), lambda *_: None, lambda: False).rgb
            assert np.array_equal(ours, theirs), task  # the same weights, read from ComfyUI's files
    finally:
        from_files.close()
        downloaded.close()


def test_without_comfyuis_tokenizers_the_table_says_what_to_give(comfyui, tmp_path):
    models_only = tmp_path / "models"
    shutil.copytree(comfyui / "models", models_only, symlinks=True)
    result = find.scan([models_only], hf_cache=False)
    assert result.tokenizers == {}
    missing = find.missing_for_tasks(find.best(result.found, result.tokenizers))
    assert all("tokenizers (give the ComfyUI installation folder" in " ".join(need) for need in missing.values())
    root = tmp_path / "model"
    done = find.record(result, root)
    assert not any(line.startswith("assembled") for line in done)
    assert not (root / "FLUX.1-Fill-dev").exists()


def test_the_readme_commands_for_an_8_gb_card_and_a_comfyui_folder(comfyui, tmp_path):
    """`models find ~/ComfyUI`, `models quantize --type q8_0`, then the daemon's engine on the GGUF tier."""
    root = tmp_path / "model"
    root.mkdir()
    (root / "TINY_MODEL.json").write_text("{}")  # tiny random weights: allowed on the CPU
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bridge_server.cli", "models"]
    for step in (["find", "--root", str(root), "--no-hf-cache", str(comfyui)], ["quantize", "--root", str(root)]):
        done = subprocess.run(
            [*cmd, *step, *(["--type", "q8_0"] if "quantize" in step else [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "gguf" / "flux1-fill-dev-Q8_0.gguf").is_file()  # quantized from ComfyUI's single file
    engine = AcePlusEngine(root, tier="gguf-q8", t5_max_length=16, idle_unload_s=None)
    try:
        assert engine.run(inpaint("local_edit"), lambda *_: None, lambda: False).rgb.shape == (48, 64, 3)
        state = engine.state()
        assert (state["tier"], state["weights"]) == ("gguf-q8", "Q8_0")
    finally:
        engine.close()
