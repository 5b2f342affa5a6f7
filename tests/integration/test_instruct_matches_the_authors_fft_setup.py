"""`instruct` (the FFT model) gets its text and its seeded noise exactly as ACE++'s authors give them to it.

The references here are written independently of the engine, from the authors' code (ali-vilab/ACE_plus
config/ace_plus_fft.yaml + modules/ace_plus_ldm.py, and scepter's HFEmbedder / tokenizer_component):
- text: ftfy.fix_text, HTML unescaped twice, strip, `regex` \\s+ -> ' ', strip; then the T5 tokenizer built from the
  very tokenizer.json the tiny model ships (the `tokenizers` library, not transformers) with their 14 identifiers
  added as special tokens in their order, truncated and padded to the T5 length; CLIP sees the same cleaned text;
- noise: torch.randn(1, 16, 2*ceil(h/16), 2*ceil(w/16), bf16) from a fresh generator seeded with the seed, on the GPU
  (CPU where there is none), packed 2x2 per token with channels in (c, ph, pw) order.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import engine_fixtures as fx
import ftfy
import numpy as np
import pytest
import regex
import torch
from tokenizers import Tokenizer

from bridge_server.engine import fft_text, recipes
from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob

tiny_root = fx.tiny_root

T5_LEN = 48
# config/ace_plus_fft.yaml, COND_STAGE_MODEL.T5_MODEL.ADDED_IDENTIFIER, in the authors' order.
AUTHORS_IDENTIFIERS = [
    "<img>", "{image}", "{caption}", "{mask}", "{ref_image}",
    "{image1}", "{image2}", "{image3}", "{image4}", "{image5}", "{image6}", "{image7}", "{image8}", "{image9}",
]  # fmt: skip

# (prompt as a user types it, what the authors' cleaning makes of it)
PROMPTS = [
    ("{image} make the sky purple", "{image} make the sky purple"),
    ("   {image}   make  the\tsky \n\n purple   ", "{image} make the sky purple"),
    ("{image}, the man faces the camera.", "{image}, the man faces the camera."),
    ("{image}make it a cat{image}", "{image}make it a cat{image}"),
    ("a cafÃ© with a crÃ¨me brÃ»lÃ©e in {image}", "a café with a crème brûlée in {image}"),  # mojibake (ftfy)
    ("\u201cfix\u201d the \ufb01sh in {image}", '"fix" the fish in {image}'),  # curly quotes, ligature
    ("{image} &amp;lt;img&amp;gt; and a\u3000cat\u00a0!", "{image} <img> and a cat !"),  # HTML twice, U+3000, NBSP
    ("ＡＢＣ {image} naïve 日本語 🎨 {mask} {image9}", "ABC {image} naïve 日本語 🎨 {mask} {image9}"),
    ("", ""),
]


def authors_clean(text: str) -> str:
    """scepter tokenizer_component: whitespace_clean(basic_clean(text)), with the `regex` module as they use it."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


def authors_t5(model_dir: Path, length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer_2" / "tokenizer.json"))
    tok.add_special_tokens(AUTHORS_IDENTIFIERS)
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=tok.token_to_id("<pad>"), pad_token="<pad>")
    return tok


def authors_clip(model_dir: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer" / "tokenizer.json"))
    tok.enable_truncation(max_length=77)
    pad = "<|endoftext|>"  # the tokenizer_config's pad token (pad = eos, as in openai/clip)
    tok.enable_padding(length=77, pad_id=tok.token_to_id(pad), pad_token=pad)
    return tok


@pytest.fixture(scope="module")
def engine(tiny_root: Path):
    eng = AcePlusEngine(tiny_root, t5_max_length=T5_LEN, idle_unload_s=None)
    yield eng
    eng.close()


def instruct_job(prompt: str, seed: int = 1, w: int = 80, h: int = 48, task: str = "instruct") -> EngineJob:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    return EngineJob(task=task, prompt=prompt, seed=seed, params={"steps": 1}, image=fx.rgba(w, h), mask=mask)


def run_capturing_text(engine: AcePlusEngine, job: EngineJob) -> tuple[list[int], list[int]]:
    """Run a job; return the input ids the T5 and the CLIP text encoders actually received."""
    engine.run(instruct_job("warm up"), lambda i, n: None, lambda: False)  # loaded, so the encoders exist
    pipe = engine._pipe
    seen: dict[str, list[int]] = {}

    def grab(name):
        def hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            seen[name] = ids[0].tolist()

        return hook

    handles = [
        pipe.text_encoder_2.register_forward_pre_hook(grab("t5"), with_kwargs=True),
        pipe.text_encoder.register_forward_pre_hook(grab("clip"), with_kwargs=True),
    ]
    try:
        engine.run(job, lambda i, n: None, lambda: False)
    finally:
        for handle in handles:
            handle.remove()
    return seen["t5"], seen["clip"]


@pytest.mark.parametrize("typed, cleaned", PROMPTS)
def test_instruct_prompt_is_cleaned_as_the_authors_clean_it(typed, cleaned):
    assert authors_clean(typed) == cleaned  # the reference itself, pinned
    assert fft_text.clean_prompt(typed) == cleaned


def test_the_authors_tokenizer_puts_image_right_after_img(tiny_root: Path):
    """Their setup: 14 identifiers after the base vocabulary, <img> first, so {image} = base + 1 (32101 on T5)."""
    model_dir = tiny_root / "FLUX.1-Fill-dev"
    base = Tokenizer.from_file(str(model_dir / "tokenizer_2" / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    ref = authors_t5(model_dir, T5_LEN)
    assert [ref.token_to_id(t) for t in AUTHORS_IDENTIFIERS] == list(range(base, base + 14))
    assert ref.token_to_id("{image}") == base + 1


@pytest.mark.parametrize("typed", [p for p, _ in PROMPTS])
def test_instruct_feeds_t5_and_clip_the_ids_of_the_authors_tokenizer(engine, tiny_root: Path, typed):
    model_dir = engine.layout.base
    t5_ids, clip_ids = run_capturing_text(engine, instruct_job(typed))
    text = authors_clean(typed)
    assert t5_ids == authors_t5(model_dir, T5_LEN).encode(text).ids
    assert clip_ids == authors_clip(model_dir).encode(text).ids


def test_lora_tasks_keep_the_diffusers_image_token_and_the_raw_prompt(engine):
    """The LoRAs run on the authors' diffusers script: only `{image}` added (base id, 32100 on T5), no cleaning."""
    model_dir = engine.layout.base
    typed = "  {image}   a  cafÃ© "
    t5_ids, _ = run_capturing_text(engine, instruct_job(typed, task="local_edit"))
    ref = Tokenizer.from_file(str(model_dir / "tokenizer_2" / "tokenizer.json"))
    base = ref.get_vocab_size(with_added_tokens=True)
    ref.add_special_tokens(["{image}"])
    ref.enable_truncation(max_length=T5_LEN)
    ref.enable_padding(length=T5_LEN, pad_id=ref.token_to_id("<pad>"), pad_token="<pad>")
    assert t5_ids == ref.encode(typed).ids
    assert t5_ids[0] == base  # and the FFT's {image} is base + 1
    fft_ids, _ = run_capturing_text(engine, instruct_job(typed))
    assert fft_ids[0] == base + 1


def authors_first_latent(seed: int, height: int, width: int, device: str) -> torch.Tensor:
    """LatentDiffusionACEPlus.noise_sample, then FluxMRModiACEPlus's 'c (h ph) (w pw) -> (h w) (c ph pw)'."""
    lh, lw = 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)
    noise = torch.randn(
        1, 16, lh, lw, device=device, dtype=torch.bfloat16,
        generator=torch.Generator(device=device).manual_seed(seed),
    )  # fmt: skip
    c, h, w = noise.shape[1:]
    packed = noise[0].reshape(c, h // 2, 2, w // 2, 2).permute(1, 3, 0, 2, 4).reshape((h // 2) * (w // 2), c * 4)
    return packed[None]


def first_fft_input(engine: AcePlusEngine, job: EngineJob) -> torch.Tensor:
    engine.run(instruct_job("warm up"), lambda i, n: None, lambda: False)  # loads the FFT transformer
    seen: list[torch.Tensor] = []
    handle = engine._fft.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["hidden_states"].detach().clone()), with_kwargs=True
    )
    try:
        engine.run(job, lambda i, n: None, lambda: False)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("seed, size", [(1, (80, 48)), (4194866942, (72, 56)), (2**24 - 1, (112, 32))])
def test_a_seed_gives_instruct_the_authors_first_latent(engine, seed, size):
    w, h = size
    job = instruct_job("{image} make it night", seed=seed, w=w, h=h)
    plan = recipes.plan_for_job(job)
    hidden = first_fft_input(engine, job)
    assert hidden.shape[-1] == 448
    expected = authors_first_latent(seed, plan.height, plan.width, "cpu")
    assert hidden.shape[1] == expected.shape[1]
    assert torch.equal(hidden[..., :64], expected.to(hidden.dtype))
    # Not a coincidence of the generator: the noise drawn in float32 (or after the VAE samples) is different.
    fp32 = torch.randn(expected.numel(), generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(hidden[..., :64].flatten().float(), fp32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU generator needs a CUDA device")
def test_on_a_gpu_instruct_draws_the_noise_from_the_gpu_generator(tiny_root: Path):
    gpu = AcePlusEngine(tiny_root, device="cuda", t5_max_length=T5_LEN, idle_unload_s=None)
    try:
        job = instruct_job("{image} make it night", seed=988183236, w=96, h=64)
        plan = recipes.plan_for_job(job)
        hidden = first_fft_input(gpu, job)
        expected = authors_first_latent(988183236, plan.height, plan.width, "cuda")
        assert torch.equal(hidden[..., :64], expected.to(hidden.dtype))
    finally:
        gpu.close()
