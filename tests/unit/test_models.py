"""Model layout, list, verify and the non-network parts of pull."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bridge_server.models import layout as models
from bridge_server.models import pull, verify
from bridge_server.models.layout import ModelLayout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from bridge_server.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_models"))


def test_layout_mirrors_the_hub_repos(tmp_path):
    layout = ModelLayout(tmp_path)
    assert layout.base == tmp_path / "FLUX.1-Fill-dev"
    assert layout.lora("portrait") == tmp_path / "ACE_Plus/portrait/comfyui_portrait_lora64.safetensors"
    assert layout.lora("subject") == tmp_path / "ACE_Plus/subject/comfyui_subject_lora16.safetensors"
    assert layout.lora("local") == tmp_path / "ACE_Plus/local_editing/comfyui_local_lora16.safetensors"
    assert layout.fft == tmp_path / "ACE_Plus/ace_plus_fft.safetensors"
    assert not layout.has_base() and len(layout.missing()) == 5


def test_tiny_model_is_complete(tiny):
    layout = ModelLayout(tiny)
    assert layout.has_base() and layout.has_fft() and layout.missing() == []
    config = json.loads((layout.base / "transformer" / "config.json").read_text())
    assert config["in_channels"] == 384 and config["out_channels"] == 64
    tok = json.loads((layout.base / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == 77


def test_list_and_verify(tiny, tmp_path):
    rows = models.list_models(tiny)
    assert [r["installed"] for r in rows] == [True] * 7  # base, 3 LoRAs, FFT, contour and depth annotators
    results = verify.verify(tiny)
    assert all(r["ok"] for r in results), results
    empty = verify.verify(tmp_path)
    assert [r["ok"] for r in empty] == [False, False, False, False, None, None, None]  # FFT and annotators optional


def test_verify_catches_truncated_and_foreign_files(tmp_path):
    layout = ModelLayout(tmp_path)
    path = layout.lora("subject")
    path.parent.mkdir(parents=True)
    save_file({"lora_unet_single_blocks_0_linear2.lora_down.weight": torch.zeros(4, 8)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    row = next(r for r in verify.verify(tmp_path) if r["name"] == "subject LoRA")
    assert row["ok"] is False and "beyond the end" in row["detail"]
    save_file({"weight": torch.zeros(2)}, str(path))
    row = next(r for r in verify.verify(tmp_path) if r["name"] == "subject LoRA")
    assert row["ok"] is False and "kohya" in row["detail"]
    layout.fft.write_bytes(struct.pack("<Q", 2) + b"{}")
    row = next(r for r in verify.verify(tmp_path) if r["name"] == "FFT")
    assert row["ok"] is False


def test_header_reader_refuses_pickles(tmp_path):
    with pytest.raises(verify.VerifyError, match="only .safetensors"):
        verify.read_safetensors_header(tmp_path / "x.ckpt")


def test_pull_needs_confirmation_and_says_size_and_licence(tmp_path):
    with pytest.raises(pull.ConfirmationRequired) as err:
        pull.pull(tmp_path, confirm=False)
    assert "35 GB" in str(err.value) and "Non-Commercial" in str(err.value)
    with pytest.raises(pull.ConfirmationRequired) as err:
        pull.pull(tmp_path, with_fft=True)
    assert "58 GB" in str(err.value)


def test_pull_plan():
    plan = pull.pull_plan(with_fft=False)
    assert plan[0][0] == "black-forest-labs/FLUX.1-Fill-dev" and "transformer/*" in plan[0][1]
    assert [p[2] for p in plan[1:]] == list(models.LORA_FILES.values())
    assert pull.pull_plan(with_fft=True)[-1] == ("ali-vilab/ACE_Plus", None, "ace_plus_fft.safetensors")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ACE_BRIDGE_MODELS", str(tmp_path))
    assert models.model_path() == tmp_path
    monkeypatch.delenv("ACE_BRIDGE_MODELS")
    assert models.default_model_root().name == "models"
    assert models.model_path(tmp_path / "x") == tmp_path / "x"


def test_a_pull_in_another_process_is_visible_as_download_progress(tmp_path, monkeypatch):
    import json
    import os
    import time

    from bridge_server.models.pull import PROGRESS_FILE, progress_bar_class, read_download_progress

    assert read_download_progress(tmp_path) is None
    bar = progress_bar_class(tmp_path)(total=1000, desc="ace_plus_fft.safetensors", file=open(os.devnull, "w"))  # noqa: SIM115
    bar.update(1000)
    bar.close()
    progress = read_download_progress(tmp_path)
    assert progress["file"] == "ace_plus_fft.safetensors" and progress["done_bytes"] == 1000
    assert progress["total_bytes"] == 1000
    record = json.loads((tmp_path / PROGRESS_FILE).read_text())
    record["updated"] = time.time() - 3600  # a pull that died an hour ago is not "downloading"
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(record))
    assert read_download_progress(tmp_path) is None
