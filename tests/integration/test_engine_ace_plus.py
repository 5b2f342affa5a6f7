"""AcePlusEngine through the real diffusers classes on the tiny model (CPU, <= 128 px, short T5 length)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import engine_fixtures as fx
import numpy as np
import pytest
import torch
from ace_protocol.errors import ErrorCode

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineError, EngineJob, JobCancelled

# Session fixtures shared with the other engine test files (pytest finds them as module attributes).
tiny_root = fx.tiny_root
tiny_base_root = fx.tiny_base_root
rgba = fx.rgba

STEPS = 2
T5_LEN = 16


@pytest.fixture(scope="module")
def engine(tiny_root: Path):
    eng = AcePlusEngine(tiny_root, t5_max_length=T5_LEN, idle_unload_s=None)
    yield eng
    eng.close()


def make_job(task: str, seed: int = 1, **params) -> EngineJob:
    has_image = task not in ("subject", "portrait", "generate")
    mask = np.zeros((48, 80), np.uint8)
    mask[8:40, 16:64] = 255
    return EngineJob(
        task=task,
        prompt="{image} a red apple on a table",
        seed=seed,
        params={"steps": STEPS, "width": 64, "height": 48, **params},
        image=rgba(80, 48) if has_image else None,
        mask=mask if has_image else None,
        references=[rgba(48, 48, 2)] if task in ("subject", "portrait", "reference_edit") else [],
    )


def run(engine: AcePlusEngine, job: EngineJob, cancel_after: int | None = None):
    steps: list[tuple[int, int]] = []
    result = engine.run(
        job, lambda i, n: steps.append((i, n)), lambda: cancel_after is not None and len(steps) >= cancel_after
    )
    return result, steps


ALL = ["instruct", "local_edit", "reference_edit", "subject", "portrait", "generate", "inpaint"]


@pytest.mark.parametrize("task", ALL)
def test_every_task_returns_region_size_rgb(engine, task):
    result, steps = run(engine, make_job(task))
    expected = (48, 64) if task in ("subject", "portrait", "generate") else (48, 80)
    assert result.rgb.shape == (*expected, 3) and result.rgb.dtype == np.uint8
    assert steps == [(i + 1, STEPS) for i in range(STEPS)]
    assert result.info["task"] == task and result.info["seed"] == 1
    # No guidance in the job: ACE++ tasks run at the authors' 50, the plain Fill tasks at BFL's 30.
    assert result.info["guidance"] == (30.0 if task in ("generate", "inpaint") else 50.0)
    json.dumps(result.info)  # provenance must be JSON-able


@pytest.mark.parametrize("mode", ["canny", "mosaic", "recolor"])
def test_local_edit_modes_run(engine, mode):
    result, _ = run(engine, make_job("local_edit", mode=mode))
    assert result.info["repainting_scale"] == 0.5 and result.rgb.shape == (48, 80, 3)


def test_seed_determinism(engine):
    a, _ = run(engine, make_job("inpaint", seed=7))
    b, _ = run(engine, make_job("inpaint", seed=7))
    c, _ = run(engine, make_job("inpaint", seed=8))
    assert np.array_equal(a.rgb, b.rgb)
    assert not np.array_equal(a.rgb, c.rgb)


def test_lora_switching_is_clean(engine):
    subject1, _ = run(engine, make_job("reference_edit", face=False))
    portrait, _ = run(engine, make_job("reference_edit", face=True))
    subject2, _ = run(engine, make_job("reference_edit", face=False))
    assert subject1.info["adapter"] == "subject" and portrait.info["adapter"] == "portrait"
    assert np.array_equal(subject1.rgb, subject2.rgb)
    assert not np.array_equal(subject1.rgb, portrait.rgb)


def test_base_tasks_run_without_lora(engine, tiny_base_root):
    """generate with all adapters loaded but disabled equals generate on a model with no LoRA at all."""
    with_loras, _ = run(engine, make_job("generate"))
    bare = AcePlusEngine(tiny_base_root, t5_max_length=T5_LEN, idle_unload_s=None)
    try:
        without, _ = run(bare, make_job("generate"))
    finally:
        bare.close()
    assert np.array_equal(with_loras.rgb, without.rgb)


def test_full_key_lora_loads_including_linear1(engine):
    run(engine, make_job("generate"))
    assert engine.state()["adapters"] == ["portrait", "subject", "local"]
    tr = engine._pipe.transformer
    proj_mlp = tr.single_transformer_blocks[0].proj_mlp
    assert set(proj_mlp.lora_A.keys()) == {"portrait", "subject", "local"}
    assert tr.single_transformer_blocks[0].attn.to_q.lora_B["subject"].weight.shape[0] == 32


def _capture_hidden(transformer):
    seen: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        seen.append(kwargs["hidden_states"].detach().clone())

    return seen, transformer.register_forward_pre_hook(hook, with_kwargs=True)


def test_masked_image_latents_follow_the_repainting_scale(engine):
    run(engine, make_job("generate"))  # make sure it is loaded
    seen, handle = _capture_hidden(engine._pipe.transformer)
    try:
        run(engine, make_job("local_edit", mode="repaint"))
        run(engine, make_job("local_edit", mode="recolor"))
    finally:
        handle.remove()
    full, half = seen[0], seen[STEPS]
    assert full.shape[-1] == 384
    # noise (0:64) is the same seed; the masked-image latents (64:128) carry the scale-0.5 content.
    assert torch.equal(full[..., :64], half[..., :64])
    assert not torch.allclose(full[..., 64:128], half[..., 64:128])


def test_fft_instruct_feeds_448_channels(engine):
    run(engine, make_job("instruct"))
    fft = engine._fft
    assert fft.config.in_channels == 448
    seen, handle = _capture_hidden(fft)
    try:
        result, _ = run(engine, make_job("instruct"))
    finally:
        handle.remove()
    assert seen[0].shape[-1] == 448 and result.info["transformer"] == "fft"


def test_cancel_mid_run_skips_decode_and_next_job_runs(engine):
    run(engine, make_job("inpaint"))
    decodes = []
    handle = engine._pipe.vae.decoder.register_forward_hook(lambda *a: decodes.append(1))
    try:
        with pytest.raises(JobCancelled):
            run(engine, make_job("inpaint", steps=4), cancel_after=1)
        assert decodes == []
        result, steps = run(engine, make_job("inpaint"))
        assert decodes == [1] and len(steps) == STEPS
    finally:
        handle.remove()


def test_unload_and_reload(tiny_root):
    eng = AcePlusEngine(tiny_root, t5_max_length=T5_LEN, idle_unload_s=None)
    assert eng.state()["state"] == "unloaded"
    first, _ = run(eng, make_job("inpaint"))
    assert eng.state()["state"] == "loaded"
    eng.unload()
    assert eng.state()["state"] == "unloaded"
    second, _ = run(eng, make_job("inpaint"))
    assert np.array_equal(first.rgb, second.rgb)
    eng.idle_unload_s = 0.0
    assert eng.idle_check() and eng.state()["state"] == "unloaded"
    eng.close()


def test_missing_base_model(tmp_path):
    eng = AcePlusEngine(tmp_path, idle_unload_s=None)
    assert eng.available_tasks() == [] and eng.state()["state"] == "missing"
    with pytest.raises(EngineError) as err:
        run(eng, make_job("generate"))
    assert err.value.code == ErrorCode.MODEL_MISSING and "ace-bridge models pull" in err.value.message


def test_missing_fft_hides_instruct(tiny_base_root):
    eng = AcePlusEngine(tiny_base_root, t5_max_length=T5_LEN, idle_unload_s=None)
    assert eng.available_tasks() == ["generate", "inpaint"]
    with pytest.raises(EngineError) as err:
        run(eng, make_job("instruct"))
    assert err.value.code == ErrorCode.MODEL_MISSING and "--fft" in err.value.message
    assert eng.state()["state"] == "unloaded"  # refused before loading anything


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_real_size_model_refused_without_gpu(tiny_base_root, tmp_path):
    shutil.copytree(tiny_base_root, tmp_path, dirs_exist_ok=True)
    config_path = tmp_path / "FLUX.1-Fill-dev" / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128)
    config_path.write_text(json.dumps(config))
    eng = AcePlusEngine(tmp_path, idle_unload_s=None)
    with pytest.raises(EngineError) as err:
        run(eng, make_job("generate"))
    assert err.value.code == ErrorCode.MODEL_MISSING
    assert "GPU" in err.value.message and "34 GB" in err.value.message
    assert eng._pipe is None


def test_bad_request_from_recipe(engine):
    with pytest.raises(EngineError) as err:
        run(engine, make_job("generate", max_tokens=99999))
    assert err.value.code == ErrorCode.BAD_REQUEST
