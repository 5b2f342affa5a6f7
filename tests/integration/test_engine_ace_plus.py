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
from ace_protocol.tasks import TASKS

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


NO_IMAGE = ("subject", "portrait", "generate", "fft_reference")
WITH_REFERENCE = ("subject", "portrait", "reference_edit", "fft_reference", "fft_reference_edit")


def make_job(task: str, seed: int = 1, references: list[np.ndarray] | None = None, **params) -> EngineJob:
    has_image = task not in NO_IMAGE
    mask = np.zeros((48, 80), np.uint8)
    mask[8:40, 16:64] = 255
    return EngineJob(
        task=task,
        prompt="{image} a red apple on a table",
        seed=seed,
        params={"steps": STEPS, "width": 64, "height": 48, **params},
        image=rgba(80, 48) if has_image else None,
        mask=mask if has_image else None,
        references=references if references is not None else [rgba(48, 48, 2)] if task in WITH_REFERENCE else [],
    )


def run(engine: AcePlusEngine, job: EngineJob, cancel_after: int | None = None):
    steps: list[tuple[int, int]] = []
    result = engine.run(
        job, lambda i, n: steps.append((i, n)), lambda: cancel_after is not None and len(steps) >= cancel_after
    )
    return result, steps


ALL = list(TASKS)  # the seven LoRA/base/instruct tasks and the six further FFT tasks


@pytest.mark.parametrize("task", ALL)
def test_every_task_returns_region_size_rgb(engine, task):
    result, steps = run(engine, make_job(task))
    expected = (48, 64) if task in NO_IMAGE else (48, 80)
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


FFT_TASKS = [t for t in TASKS if t.startswith("fft_")]


@pytest.mark.parametrize("task", FFT_TASKS)
def test_fft_tasks_feed_448_channels_without_a_lora(engine, task):
    run(engine, make_job("instruct"))  # the FFT transformer is loaded
    seen, handle = _capture_hidden(engine._fft)
    try:
        result, _ = run(engine, make_job(task))
    finally:
        handle.remove()
    assert seen[0].shape[-1] == 448 and len(seen) == STEPS
    assert result.info["transformer"] == "fft" and result.info["adapter"] is None
    scale = TASKS[task].param("repainting_scale")  # the authors' scale of the edit type (fft_reference: 1)
    assert result.info["guidance"] == 50.0 and result.info["repainting_scale"] == (
        1.0 if scale is None else scale.default
    )


def test_fft_control_image_goes_into_the_change_channels(engine):
    run(engine, make_job("instruct"))
    seen, handle = _capture_hidden(engine._fft)
    try:
        plain, _ = run(engine, make_job("fft_control"))
        guided, _ = run(engine, make_job("fft_control", references=[rgba(80, 48, 5)]))
    finally:
        handle.remove()
    first, second = seen[0], seen[STEPS]
    assert guided.info["control"] is True and plain.info["control"] is False
    # noise 0:64 and the edit input 64:128 (the image outside the mask) are the same; "change" 128:192 is not.
    assert torch.equal(first[..., :128], second[..., :128])
    assert not torch.allclose(first[..., 128:192], second[..., 128:192])
    assert not np.array_equal(plain.rgb, guided.rgb)


def test_local_edit_repainting_scale_and_no_preprocess_control(engine):
    run(engine, make_job("generate"))
    seen, handle = _capture_hidden(engine._pipe.transformer)
    try:
        default, _ = run(engine, make_job("local_edit", mode="canny"))
        lighter, _ = run(engine, make_job("local_edit", mode="canny", repainting_scale=0.2))
        control, _ = run(engine, make_job("local_edit", mode="no_preprocess", references=[rgba(80, 48, 5)]))
    finally:
        handle.remove()
    assert (default.info["repainting_scale"], lighter.info["repainting_scale"]) == (0.5, 0.2)
    assert control.info["mode"] == "no_preprocess" and control.info["control"] is True
    assert control.info["adapter"] == "local" and seen[0].shape[-1] == 384
    assert not torch.allclose(seen[0][..., 64:128], seen[STEPS][..., 64:128])
    assert control.rgb.shape == (48, 80, 3)


@pytest.mark.parametrize("task", ["reference_edit", "subject", "fft_reference", "fft_reference_edit"])
def test_several_references_in_one_job(engine, task):
    refs = [rgba(48, 48, 2), rgba(32, 48, 3), rgba(24, 40, 4)]
    result, _ = run(engine, make_job(task, references=refs))
    spans = result.info["references"]
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == result.info["edit_columns"][0]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert result.rgb.shape == ((48, 64, 3) if task in NO_IMAGE else (48, 80, 3))


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


# ---------------------------------------------------------------------------------------------------- strength
def _inside_mask_difference(job: EngineJob, rgb: np.ndarray) -> float:
    inside = job.mask > 128
    source = job.image[..., :3].astype(np.float64)
    return float(np.abs(rgb.astype(np.float64) - source)[inside].mean())


def test_strength_one_is_todays_result_bit_for_bit(engine):
    before, steps_before = run(engine, make_job("inpaint", seed=5, steps=4))
    explicit, steps_explicit = run(engine, make_job("inpaint", seed=5, steps=4, strength=1.0))
    assert np.array_equal(before.rgb, explicit.rgb)
    assert steps_before == steps_explicit == [(i + 1, 4) for i in range(4)]
    assert explicit.info["strength"] == 1.0


@pytest.mark.parametrize("task", ["inpaint", "local_edit", "fft_repaint"])
def test_lower_strength_runs_fewer_steps_and_stays_closer_to_the_input(engine, task):
    full_job = make_job(task, seed=3, steps=8)
    full, full_steps = run(engine, full_job)
    low_job = make_job(task, seed=3, steps=8, strength=0.25)
    low, low_steps = run(engine, low_job)
    # FluxFillPipeline's rule: int(8 - 8 * 0.25) = 6 timesteps skipped, 2 run; progress counts the ones that run.
    assert full_steps[-1] == (8, 8) and low_steps == [(1, 2), (2, 2)]
    assert low.info["strength"] == 0.25
    assert _inside_mask_difference(low_job, low.rgb) < _inside_mask_difference(full_job, full.rgb)
    again, _ = run(engine, make_job(task, seed=3, steps=8, strength=0.25))
    assert np.array_equal(low.rgb, again.rgb)


def test_strength_below_one_needs_an_image(engine):
    with pytest.raises(EngineError) as err:
        run(engine, make_job("generate", strength=0.5))
    assert err.value.code == ErrorCode.BAD_REQUEST and "strength" in str(err.value)
