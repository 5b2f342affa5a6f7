"""`models find` on tiny real files laid out like a ComfyUI installation, the Hugging Face cache and loose single
files (recognised by their tensors, not their names), the recorded choice used by the engine, and `models quantize`
(resumable, refuses what it cannot write, loads back through the daemon's GGUF path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import engine_fixtures as fx
import numpy as np
import pytest
import torch
from ace_protocol.tasks import TASKS
from safetensors.torch import load_file, save_file

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob
from bridge_server.engine.convert import diffusers_to_bfl
from bridge_server.models import find, quantize
from bridge_server.models.layout import ModelLayout

tiny_root = fx.tiny_root


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def trees(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ComfyUI/models/{unet,diffusion_models,loras,clip,vae}, an HF hub cache with the Fill diffusers folder
    (snapshot files linked to blobs, as the hub does), and a loose folder with a single Fill file named vaguely."""
    from diffusers import FluxFillPipeline

    top = tmp_path_factory.mktemp("found")
    layout = ModelLayout(tiny_root)
    pipe = FluxFillPipeline.from_pretrained(str(layout.base), local_files_only=True)
    fill_bfl = {k: v.to(torch.bfloat16) for k, v in diffusers_to_bfl(pipe.transformer.state_dict()).items()}
    loose = _save(fill_bfl, top / "loose" / "model.safetensors")
    comfy = top / "ComfyUI" / "models"
    # ComfyUI-GGUF style: the authors' BFL keys, quantized big matrices, in unet/
    quantize.quantize(loose, comfy / "unet" / "flux1-fill-dev-Q4_0.gguf", "Q4_0")
    fft = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in load_file(str(layout.fft)).items()}
    _save(fft, comfy / "diffusion_models" / "ace_plus_fft_fp8.safetensors")
    # a name that lies: "fill" in the name, the FFT's 448 channels inside
    _save(fft, comfy / "unet" / "flux1-fill-dev-fp8.safetensors")
    (comfy / "loras").mkdir(parents=True)
    for name in ("portrait", "subject", "local"):
        shutil.copy(layout.lora(name), comfy / "loras" / layout.lora(name).name)
    _save(pipe.text_encoder_2.state_dict(), comfy / "clip" / "t5xxl_fp16.safetensors")
    _save(pipe.text_encoder.state_dict(), comfy / "text_encoders" / "clip_l.safetensors")
    _save(pipe.vae.state_dict(), comfy / "vae" / "ae.safetensors")
    hub = top / "hub"
    snapshot = hub / "models--black-forest-labs--FLUX.1-Fill-dev" / "snapshots" / "0123abcd"
    blobs = hub / "models--black-forest-labs--FLUX.1-Fill-dev" / "blobs"
    blobs.mkdir(parents=True)
    for i, src in enumerate(sorted(p for p in layout.base.rglob("*") if p.is_file())):
        blob = blobs / f"{i:04x}"
        shutil.copy(src, blob)
        dst = snapshot / src.relative_to(layout.base)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blob, dst)
    return {"comfy": top / "ComfyUI", "hub": hub, "loose": top / "loose", "top": top}


def by_path(result: find.Scan) -> dict[str, find.Found]:
    return {Path(f.path).name: f for f in result.found}


def test_find_recognises_each_file_by_its_tensors(trees, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(trees["hub"]))
    result = find.scan([trees["comfy"], trees["loose"]])
    got = by_path(result)
    assert result.problems == []
    gguf = got["flux1-fill-dev-Q4_0.gguf"]
    assert (gguf.kind, gguf.model, gguf.dtype, gguf.layout) == ("transformer", "fill", "Q4_0", "bfl")
    fft = got["ace_plus_fft_fp8.safetensors"]
    assert (fft.kind, fft.model, fft.dtype) == ("transformer", "fft", "fp8")
    liar = got["flux1-fill-dev-fp8.safetensors"]
    assert liar.model == "fft" and "its name says transformer fill" in liar.note
    assert (got["model.safetensors"].model, got["model.safetensors"].dtype) == ("fill", "bf16")
    loras = {f.model: f.rank for f in result.found if f.kind == "lora"}
    assert loras == {"portrait": 64, "subject": 16, "local": 16}
    assert "file name" in got["comfyui_subject_lora16.safetensors"].note  # honest: shapes cannot tell
    assert {got["t5xxl_fp16.safetensors"].kind, got["clip_l.safetensors"].kind, got["ae.safetensors"].kind} == {
        "t5",
        "clip",
        "vae",
    }
    hf = got["0123abcd"]
    assert (hf.kind, hf.model) == ("diffusers", "fill")
    text = find.table(result)
    assert "FLUX fill transformer" in text and "Q4_0" in text and "instruct        ready" in text


def test_without_the_diffusers_folder_the_table_says_what_is_missing(trees):
    result = find.scan([trees["comfy"]], hf_cache=False)
    missing = find.missing_for_tasks(find.best(result.found))
    # a ComfyUI tree without the program (no comfy/ tokenizer folders) and no diffusers folder: no tokenizers
    assert all("tokenizers (give the ComfyUI installation folder" in " ".join(need) for need in missing.values())
    assert not any("LoRA" in " ".join(need) for need in missing.values())  # all three LoRAs are there


def test_a_recorded_choice_is_what_the_engine_uses(trees, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(trees["hub"]))
    result = find.scan([trees["comfy"], trees["loose"]])
    (tmp_path / "TINY_MODEL.json").write_text("{}")  # tiny random weights: allowed on the CPU
    done = find.record(result, tmp_path)
    assert any("linked" in line for line in done) and (tmp_path / find.SELECTION_FILE).is_file()
    files = find.transformer_files(tmp_path)
    assert "Q4_0" in files["fill"] and "fp8" in files["fft"]
    engine = AcePlusEngine(tmp_path, tier="gguf-q4", t5_max_length=16, idle_unload_s=None)
    try:
        assert engine.available_tasks() == list(TASKS)
        mask = np.zeros((48, 64), np.uint8)
        mask[8:40, 16:48] = 255
        for task in ("local_edit", "instruct"):
            job = EngineJob(
                task=task, prompt="{image} a hat", seed=1, params={"steps": 2}, image=fx.rgba(64, 48), mask=mask
            )
            assert engine.run(job, lambda *_: None, lambda: False).rgb.shape == (48, 64, 3)
        state = engine.state()
        assert (state["tier"], state["weights"]) == ("gguf-q4", "Q4_0")
        linears = {type(getattr(m, "base_layer", m)).__name__ for m in engine._pipe.transformer.modules()}
        assert "GGUFLinear" in linears  # the ComfyUI-style BFL GGUF, through diffusers' GGUF path
    finally:
        engine.close()


def test_quantize_resumes_and_gives_the_same_file(tiny_root: Path, tmp_path: Path):
    source = ModelLayout(tiny_root).base
    whole = quantize.quantize(source, tmp_path / "whole.gguf", "Q5_0")
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize(source, tmp_path / "resumed.gguf", "Q5_0", stop_after=7)
    assert len(list((tmp_path / "resumed.gguf.parts").glob("?????.npy"))) == 7
    resumed = quantize.quantize(source, tmp_path / "resumed.gguf", "Q5_0")
    assert resumed.resumed == 7 and not (tmp_path / "resumed.gguf.parts").exists()
    assert (tmp_path / "whole.gguf").read_bytes() == (tmp_path / "resumed.gguf").read_bytes()
    assert whole.quantized > 0 and whole.max_error < quantize.ERROR_BOUND["Q5_0"]


def test_quantize_refuses_what_it_cannot_write_or_read(tiny_root: Path, tmp_path: Path):
    layout = ModelLayout(tiny_root)
    with pytest.raises(quantize.QuantizeError, match="K types"):
        quantize.quantize(layout.base, tmp_path / "x.gguf", "Q4_K")
    with pytest.raises(quantize.QuantizeError, match="not a FLUX transformer"):
        quantize.quantize(layout.lora("portrait"), tmp_path / "x.gguf", "Q8_0")


def test_models_quantize_and_find_commands(tiny_root: Path, tmp_path: Path):
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bridge_server.cli", "models"]
    done = subprocess.run(
        [*cmd, "quantize", "--root", str(root), "--fft", "--type", "q4_1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded back through the daemon's GGUF path: OK" in done.stdout
    assert (root / "gguf" / "ace_plus_fft-Q4_1.gguf").is_file()
    table = subprocess.run(
        [*cmd, "find", "--no-hf-cache", "--dry-run", str(root / "gguf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr
    assert "FLUX fft transformer" in table.stdout and "Q4_1" in table.stdout
