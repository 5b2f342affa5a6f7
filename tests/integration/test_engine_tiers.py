"""Every memory tier's code path on the tiny model (CPU): GGUF transformers through diffusers' real GGUF loading
(written by `models quantize`), fp8 weight-only storage, group offload, text encoders on the CPU with the prompt
cache, and the typed errors a user sees instead of a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import engine_fixtures as fx
import numpy as np
import pytest
import torch
from ace_protocol.tasks import TASKS

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob, EngineSetupError
from bridge_server.models import quantize

tiny_root = fx.tiny_root
T5_LEN = 16
NO_IMAGE = ("subject", "portrait", "generate", "fft_reference")
WITH_REFERENCE = ("subject", "portrait", "reference_edit", "fft_reference", "fft_reference_edit")


def make_job(task: str, prompt: str = "{image} a red apple on a table", seed: int = 1) -> EngineJob:
    has_image = task not in NO_IMAGE
    mask = np.zeros((48, 80), np.uint8)
    mask[8:40, 16:64] = 255
    return EngineJob(
        task=task,
        prompt=prompt,
        seed=seed,
        params={"steps": 2, "width": 64, "height": 48},
        image=fx.rgba(80, 48) if has_image else None,
        mask=mask if has_image else None,
        references=[fx.rgba(48, 48, 2)] if task in WITH_REFERENCE else [],
    )


def run(engine: AcePlusEngine, job: EngineJob) -> np.ndarray:
    return engine.run(job, lambda *_: None, lambda: False).rgb


@pytest.fixture(scope="module")
def gguf_root(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model plus GGUF files of its Fill transformer (Q8_0, Q4_0) and of its FFT model (Q8_0, BFL keys),
    where `models quantize` puts them (ROOT/gguf)."""
    root = tmp_path_factory.mktemp("tiny_gguf")
    shutil.copytree(tiny_root, root, dirs_exist_ok=True)
    out = root / "gguf"
    for qtype in ("Q8_0", "Q4_0"):
        quantize.quantize(root / "FLUX.1-Fill-dev", out / f"flux1-fill-dev-{qtype}.gguf", qtype)
    quantize.quantize(root / "ACE_Plus" / "ace_plus_fft.safetensors", out / "ace_plus_fft-Q8_0.gguf", "Q8_0")
    return root


def _gguf_linears(module: torch.nn.Module) -> set[str]:
    return {type(getattr(m, "base_layer", m)).__name__ for m in module.modules() if hasattr(m, "in_features")}


@pytest.fixture(scope="module")
def q8(gguf_root: Path):
    engine = AcePlusEngine(gguf_root, tier="gguf-q8", t5_max_length=T5_LEN, idle_unload_s=None)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def bf16(gguf_root: Path):
    """The same tier settings (text encoders on the CPU, tiled VAE) with the float weights."""
    engine = AcePlusEngine(gguf_root, tier="bf16", t5_max_length=T5_LEN, idle_unload_s=None)
    yield engine
    engine.close()


def _first_prediction(engine: AcePlusEngine, job: EngineJob) -> tuple[np.ndarray, torch.Tensor]:
    """Run a job; return its RGB and the transformer's first velocity prediction."""
    run(engine, make_job("inpaint"))  # loaded
    fft = TASKS[job.task].model_piece == "fft"
    if fft:
        run(engine, make_job("instruct"))
    transformer = engine._fft if fft else engine._pipe.transformer
    seen: list[torch.Tensor] = []
    handle = transformer.register_forward_hook(lambda _m, _a, out: seen.append(out[0].detach().clone()))
    try:
        rgb = run(engine, job)
    finally:
        handle.remove()
    return rgb, seen[0]


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_runs_on_a_gguf_transformer(q8, bf16, task):
    rgb, velocity = _first_prediction(q8, make_job(task))
    state = q8.state()
    assert (state["tier"], state["weights"], state["tier_reason"]) == ("gguf-q8", "Q8_0", "requested")
    transformer = q8._fft if TASKS[task].model_piece == "fft" else q8._pipe.transformer
    assert "GGUFLinear" in _gguf_linears(transformer)  # diffusers' GGUF layers, dequantized at each forward
    reference_rgb, reference = _first_prediction(bf16, make_job(task))
    assert rgb.shape == reference_rgb.shape
    # Q8_0 weights: the first prediction within ~1 % of the float model's (the tiny random VAE then amplifies
    # any difference, so the decoded pictures are not compared)
    assert float((velocity - reference).abs().max()) < 0.02 * float(reference.abs().max())


@pytest.mark.parametrize("tier", ["gguf-q4", "fp8", "group-offload", "sequential-offload", "bf16"])
@pytest.mark.parametrize("task", ["local_edit", "instruct", "inpaint"])
def test_each_tier_code_path_runs(gguf_root: Path, tier: str, task: str):
    engine = AcePlusEngine(gguf_root, tier=tier, t5_max_length=T5_LEN, idle_unload_s=None)
    try:
        rgb = run(engine, make_job(task))
        state = engine.state()
        assert rgb.shape == (48, 80, 3) and state["tier"] == tier
        pipe = engine._pipe
        if tier == "fp8":
            assert pipe.transformer.transformer_blocks[0].ff.net[2].base_layer.weight.dtype == torch.float8_e4m3fn
        if tier == "group-offload":
            assert state["memory_mode"] == "group-offload" and state["weights"] == "Q4_0"  # the smallest file
            assert any(getattr(m, "_diffusers_hook", None) for m in pipe.transformer.modules())
        if tier == "sequential-offload":  # accelerate hooks; GGUF cannot go through them, so the float weights
            assert state["weights"] == "bf16" and hasattr(pipe.transformer, "_hf_hook")
        assert pipe.vae.use_tiling
    finally:
        engine.close()


def test_a_repeated_prompt_is_not_encoded_again(gguf_root: Path):
    engine = AcePlusEngine(gguf_root, tier="bf16", t5_max_length=T5_LEN, idle_unload_s=None)
    try:
        run(engine, make_job("inpaint", prompt="a hat"))
        calls: list[int] = []
        handle = engine._pipe.text_encoder_2.register_forward_hook(lambda *_: calls.append(1))
        try:
            first = run(engine, make_job("inpaint", prompt="a hat", seed=3))
            assert calls == []  # from the cache
            run(engine, make_job("inpaint", prompt="a scarf"))
            assert calls == [1]
        finally:
            handle.remove()
        cache = engine.state()["prompt_cache"]
        assert cache["hits"] == 1 and cache["misses"] == 2
        assert next(engine._pipe.text_encoder_2.parameters()).device.type == "cpu"
        engine.unload()
        again = run(engine, make_job("inpaint", prompt="a hat", seed=3))  # a fresh encode gives the same image
        assert np.array_equal(first, again)
    finally:
        engine.close()


def test_a_requested_gguf_tier_without_its_file_is_a_typed_error(tiny_root: Path):
    engine = AcePlusEngine(tiny_root, tier="gguf-q4", t5_max_length=T5_LEN, idle_unload_s=None)
    with pytest.raises(EngineSetupError) as err:
        run(engine, make_job("inpaint"))
    assert err.value.kind == "model_missing" and "models quantize" in err.value.message
    state = engine.state()
    assert state["state"] == "error" and state["error_kind"] == "model_missing"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_no_gpu_shows_in_the_state_before_any_job(tiny_root: Path, tmp_path: Path):
    shutil.copytree(tiny_root, tmp_path, dirs_exist_ok=True)
    (tmp_path / "TINY_MODEL.json").unlink()
    config_path = tmp_path / "FLUX.1-Fill-dev" / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128)
    config_path.write_text(json.dumps(config))
    engine = AcePlusEngine(tmp_path, idle_unload_s=None)
    state = engine.state()  # what `ace-bridge status` and the panel show, before anyone runs a job
    assert state["state"] == "error" and state["error_kind"] == "no_gpu" and "GPU" in state["error"]
    with pytest.raises(EngineSetupError) as err:
        run(engine, make_job("inpaint"))
    assert err.value.kind == "no_gpu"


def test_unknown_tier_is_refused_at_start(tiny_root: Path):
    with pytest.raises(ValueError, match="unknown tier"):
        AcePlusEngine(tiny_root, tier="q2")


def test_a_file_that_is_not_what_its_name_says_is_a_typed_error(tiny_root: Path, tmp_path: Path):
    """An "FFT" file that is really a Fill transformer (384 input channels): wrong_file, with what to run."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from bridge_server.engine.convert import diffusers_to_bfl

    shutil.copytree(tiny_root, tmp_path, dirs_exist_ok=True)
    engine = AcePlusEngine(tmp_path, t5_max_length=T5_LEN, idle_unload_s=None)
    fill = FluxTransformer2DModel.from_pretrained(str(engine.layout.base), subfolder="transformer")
    save_file({k: v.contiguous() for k, v in diffusers_to_bfl(fill.state_dict()).items()}, str(engine.layout.fft))
    try:
        with pytest.raises(EngineSetupError) as err:
            run(engine, make_job("instruct"))
        assert err.value.kind == "wrong_file" and "384" in err.value.message and "models find" in err.value.message
    finally:
        engine.close()
