"""A tiny random-weight ACE++ model in the real layout, built offline and bit-identically in every process.

Why: no weights can be downloaded in tests or CI. The tiny model keeps everything the engine depends on: the Fill
geometry (transformer in_channels 384 = 64 noise + 64 masked image + 256 mask, out 64; VAE factor 8, 16 latent
channels, FLUX shift/scale), CLIP pooled + T5 sequence text encoders with locally built tokenizers (CLIP
model_max_length 77), the ACE++ kohya LoRA key set (single-block linear1 included, alpha = rank), and the FFT file
(448 input channels, BFL key layout). Paths follow `bridge_server.models.layout.ModelLayout`, exactly like a real install.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file

from bridge_server.engine.convert import diffusers_to_bfl
from bridge_server.models.layout import ModelLayout

# Transformer: 1 double + 1 single block, 2 heads x 16 dims; rope axes must be even and sum to the head dim.
TINY_HEADS, TINY_HEAD_DIM, TINY_ROPE = 2, 16, (4, 6, 6)
TEXT_DIM = 32
LORA_RANKS = {"portrait": 64, "subject": 16, "local": 16}
_SEEDS = {"transformer": 1, "vae": 2, "clip": 3, "t5": 4, "fft": 5, "portrait": 6, "subject": 7, "local": 8}

# A fixed word list: the vocabularies come from it, never from a trainer (those are not deterministic).
_WORDS = (
    "a an the of in on at to and with by for from is are be this that it its image mask make look like "
    "logo print printed mug cup girl boy man woman face person wearing red blue green white black gray grey "
    "coat dress shirt hat snow beach city street room table chair lighthouse cliff dusk sky sun moon tree "
    "flower flowers vase sunflowers apple owl old remove add replace restore colorize selected area partial "
    "doodle painting watercolour watercolor photo style minimalist headphones skirt camera faces display "
    "attach icon maintain facial features character dress scene new keep same without changing anything else"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (as in GPT-2/CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clip_vocab(num_merges: int = 120) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab laid out like openai/clip: bytes, bytes+</w>, merges, then the two specials."""
    chars = [_bytes_to_unicode()[b] for b in range(256)]
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in _WORDS]
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        if not pairs:
            break
        # Most frequent pair; ties broken by the pair itself so the order never depends on hashing.
        (a, b), _count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
        merged_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged_words.append(out)
        words = merged_words
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _t5_vocab() -> list[tuple[str, float]]:
    """Unigram vocab: <pad>, </s>, <unk>, whole words, single characters, then 100 sentinels (reverse order)."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for rank, word in enumerate(sorted(set(_WORDS))):
        piece = "▁" + word
        if piece not in seen:
            pieces.append((piece, -3.0 - rank * 0.01))
            seen.add(piece)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"(){}[]<>-_/\\&%$#@*+=":
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                pieces.append((piece, -8.0))
                seen.add(piece)
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return pieces


def _seeded(name: str):
    torch.manual_seed(_SEEDS[name])


def build_tiny_pipeline():
    """The FluxFillPipeline itself (in memory), every component in eval mode."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    with torch.random.fork_rng(devices=[]):
        vocab, merges = _clip_vocab()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        tokenizer_2 = T5Tokenizer(vocab=_t5_vocab(), extra_ids=100, model_max_length=512)
        _seeded("clip")
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_DIM,
                intermediate_size=37,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=TEXT_DIM,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        _seeded("t5")
        # 64 spare rows so added tokens such as {image} embed without a resize (real T5: 32100 tokens, 32128 rows).
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2) + 64,
                d_model=TEXT_DIM,
                d_ff=37,
                d_kv=16,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                dropout_rate=0.0,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
        _seeded("transformer")
        transformer = FluxTransformer2DModel(**tiny_transformer_config(384))
        _seeded("vae")
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            sample_size=32,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    pipe = FluxFillPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    for module in (vae, text_encoder, text_encoder_2, transformer):
        module.eval()
    return pipe


def tiny_transformer_config(in_channels: int) -> dict:
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": 64,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": TINY_HEAD_DIM,
        "num_attention_heads": TINY_HEADS,
        "joint_attention_dim": TEXT_DIM,
        "pooled_projection_dim": TEXT_DIM,
        "guidance_embeds": True,
        "axes_dims_rope": TINY_ROPE,
    }


def ace_lora_state_dict(
    width: int,
    rank: int,
    *,
    num_double: int = 1,
    num_single: int = 1,
    mlp_ratio: float = 4.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.bfloat16,
    scale: float = 0.05,
) -> dict[str, torch.Tensor]:
    """The full ACE++ kohya key set for a model of this width and block count (random small weights, alpha = rank)."""
    mlp = int(width * mlp_ratio)
    double = {
        "attn_qkv": (width, 3 * width),
        "attn_proj": (width, width),
        "mlp_0": (width, mlp),
        "mlp_2": (mlp, width),
        "mod_lin": (width, 6 * width),
    }
    single = {
        "linear1": (width, 3 * width + mlp),
        "linear2": (width + mlp, width),
        "modulation_lin": (width, 3 * width),
    }
    modules: list[tuple[str, tuple[int, int]]] = []
    for i in range(num_double):
        for stream in ("img", "txt"):
            modules += [(f"lora_unet_double_blocks_{i}_{stream}_{m}", s) for m, s in double.items()]
    for i in range(num_single):
        modules += [(f"lora_unet_single_blocks_{i}_{m}", s) for m, s in single.items()]
    out = {}
    for key, (n_in, n_out) in modules:
        out[f"{key}.lora_down.weight"] = (torch.randn(rank, n_in, generator=generator) * scale).to(dtype)
        out[f"{key}.lora_up.weight"] = (torch.randn(n_out, rank, generator=generator) * scale).to(dtype)
        out[f"{key}.alpha"] = torch.tensor(float(rank), dtype=dtype)
    return out


def build_tiny_model(out_dir: Path, *, full: bool = True) -> Path:
    """Write the tiny model root (`ModelLayout(out_dir)`): base folder, and with `full` the 3 LoRAs, the FFT file
    and the two annotators."""
    from diffusers import FluxTransformer2DModel

    layout = ModelLayout(Path(out_dir))
    pipe = build_tiny_pipeline()
    pipe.save_pretrained(layout.base, safe_serialization=True)
    # A marker so the engine (and people) can tell a test model from the real one at a glance.
    (layout.root / "TINY_MODEL.json").write_text(json.dumps({"tiny": True, "note": "random weights, tests only"}))
    if not full:
        return layout.root
    width = TINY_HEADS * TINY_HEAD_DIM
    for name, rank in LORA_RANKS.items():
        gen = torch.Generator().manual_seed(_SEEDS[name])
        path = layout.lora(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(ace_lora_state_dict(width, rank, generator=gen), str(path))
    with torch.random.fork_rng(devices=[]):
        _seeded("fft")
        # diffusers' model classes are not typed as nn.Module for the checker; they are one.
        fft = cast(torch.nn.Module, FluxTransformer2DModel(**tiny_transformer_config(448))).eval()
    bfl = {k: v.contiguous().to(torch.bfloat16) for k, v in diffusers_to_bfl(fft.state_dict()).items()}
    layout.fft.parent.mkdir(parents=True, exist_ok=True)
    save_file(bfl, str(layout.fft))
    from bridge_server.engine.annotators.weights import save_tiny_annotators

    save_tiny_annotators(layout.annotators)  # the contour/depth structure modes, at a few channels
    return layout.root
