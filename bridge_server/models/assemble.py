"""A FLUX.1-Fill-dev diffusers folder assembled from the single files a ComfyUI user already has, offline.

A ComfyUI installation keeps FLUX's pieces as loose files (shared/reference/consumer_gpus.md): `clip_l.safetensors`
and `t5xxl_fp16.safetensors` in models/clip (= models/text_encoders), `ae.safetensors` in models/vae, the transformer
in models/unet or models/diffusion_models, and the two tokenizers inside the program (`comfy/sd1_tokenizer`,
`comfy/text_encoders/t5_tokenizer`). `models find` recognises each by its tensors; `assemble` then writes ROOT's
`FLUX.1-Fill-dev/` folder so `serve` loads them like the downloaded model, with nothing fetched:

  text_encoder/    config.json derived from clip_l's tensors + a link to the file (ComfyUI keeps HF's keys)
  text_encoder_2/  config.json derived from the T5 file's tensors + a link to it
  vae/             config.json from the shipped FLUX VAE config, shapes from the file; BFL/LDM keys (ComfyUI's
                   ae.safetensors) converted once to diffusers keys (84 M params), diffusers keys linked
  tokenizer*/      copies of ComfyUI's tokenizer files, CLIP's length set to its 77 positions (ComfyUI says 8192,
                   and the pipeline pads CLIP to that length)
  transformer/     config.json only, sizes from the transformer file: the engine loads the weights from the
                   recorded single/GGUF file
  scheduler/, model_index.json   shipped (bridge_server/models/configs)

Sizes come from the tensors. Two numbers cannot be read from shapes: CLIP's head count and the VAE's GroupNorm
groups. CLIP-L (and FLUX's VAE) use 64-wide heads and 32 groups; narrower models (the project's tiny test model)
get 16-wide heads and channels/2 groups, which the rules below give for both. Likewise FLUX's rope axes (16, 56, 56)
follow from its 128-wide heads as (h - 2s, s, s) with s = 7h/16 rounded down to even.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from bridge_server.models.configs import fill_config_dir

ASSEMBLED_FILE = "ASSEMBLED.json"  # in the base folder: what it was built from
TOKENIZER_DIRS = {"tokenizer": "comfy/sd1_tokenizer", "tokenizer_2": "comfy/text_encoders/t5_tokenizer"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
)
NEEDED = ("t5", "clip", "vae", "tokenizer", "tokenizer_2")
MODEL_INDEX = {
    "_class_name": "FluxFillPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


class AssembleError(Exception):
    """A piece that does not fit (e.g. a tokenizer folder without its files)."""


def comfy_tokenizers(install: Path) -> dict[str, str]:
    """The tokenizer folders a ComfyUI installation ships ({"tokenizer": dir, "tokenizer_2": dir}); `install` is
    the installation folder or its models/ folder."""
    install = Path(install)
    root = install.parent if install.name == "models" else install
    out = {}
    for name, sub in TOKENIZER_DIRS.items():
        folder = root / sub
        if folder.is_dir() and any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "spiece.model")):
            out[name] = str(folder)
    return out


def can_assemble(pick: dict[str, Any]) -> bool:
    return not pick.get("base_folder") and all(pick.get(k) for k in NEEDED) and bool(pick["transformers"]["fill"])


def missing_pieces(pick: dict[str, Any]) -> list[str]:
    return [k for k in NEEDED if not pick.get(k)]


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with Path(path).open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items()}


def _count(keys: Any, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def clip_config(path: Path, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    t = {k.removeprefix("text_model."): v for k, v in _header(path).items()}
    vocab, hidden = t["embeddings.token_embedding.weight"][0]
    heads_width = 64 if hidden % 64 == 0 else 16
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=t["encoder.layers.0.mlp.fc1.weight"][0][0],
        num_hidden_layers=_count(t, r"encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, hidden // heads_width),
        max_position_embeddings=t["embeddings.position_embedding.weight"][0][0],
        projection_dim=hidden,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooling takes the hidden state at this token
        pad_token_id=tokenizer.pad_token_id,
        architectures=["CLIPTextModel"],
    )


def t5_config(path: Path) -> Any:
    from transformers import T5Config

    t = _header(path)
    vocab, d_model = t["shared.weight"][0]
    attention = "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = t[attention + "relative_attention_bias.weight"][0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in t
    wi = "wi_0" if gated else "wi"
    fields: dict[str, Any] = dict(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=t[attention + "q.weight"][0][0] // heads,
        d_ff=t[f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight"][0][0],
        num_layers=_count(t, r"encoder\.block\.(\d+)\."),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",  # T5 v1.1 (T5-XXL) is gated-gelu
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        architectures=["T5EncoderModel"],
    )
    return T5Config(**fields)  # decoder/tying fields go through T5Config's **kwargs to PretrainedConfig


def _tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes (torch order) of a safetensors or GGUF file, without reading the data."""
    if Path(path).suffix != ".gguf":
        return _header(path)
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (tuple(int(x) for x in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors}


def transformer_config(path: Path) -> dict[str, Any]:
    """FluxTransformer2DModel config of a transformer file (BFL or diffusers keys, safetensors or GGUF)."""
    config = json.loads((fill_config_dir() / "transformer" / "config.json").read_text(encoding="utf-8"))
    t = {}
    for key, value in _tensors(path).items():
        for prefix in ("model.diffusion_model.", "diffusion_model.", "transformer."):
            key = key.removeprefix(prefix)
        t[key] = value
    if "img_in.weight" in t:  # the authors' (BFL) layout, as ComfyUI keeps it
        inner, channels = t["img_in.weight"][0]
        joint, pooled = t["txt_in.weight"][0][1], t["vector_in.in_layer.weight"][0][1]
        head = t["double_blocks.0.img_attn.norm.query_norm.scale"][0][0]
        double, single = _count(t, r"double_blocks\.(\d+)\."), _count(t, r"single_blocks\.(\d+)\.")
        guidance = any(k.startswith("guidance_in.") for k in t)
    else:
        inner, channels = t["x_embedder.weight"][0]
        joint = t["context_embedder.weight"][0][1]
        pooled = t["time_text_embed.text_embedder.linear_1.weight"][0][1]
        head = t["transformer_blocks.0.attn.norm_q.weight"][0][0]
        double = _count(t, r"transformer_blocks\.(\d+)\.")
        single = _count(t, r"single_transformer_blocks\.(\d+)\.")
        guidance = any(k.startswith("time_text_embed.guidance_embedder.") for k in t)
    side = int(head * 7 / 16) // 2 * 2  # FLUX: (16, 56, 56) for 128-wide heads; every axis even
    config.update(
        in_channels=channels,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head,
        num_attention_heads=inner // head,
        joint_attention_dim=joint,
        pooled_projection_dim=pooled,
        guidance_embeds=guidance,
        axes_dims_rope=[head - 2 * side, side, side],
    )
    return config


def vae_config(tensors: dict[str, tuple[tuple[int, ...], str]]) -> tuple[dict[str, Any], bool]:
    """(diffusers AutoencoderKL config, whether the keys are BFL/LDM ones) from a VAE file's tensors."""
    config = json.loads((fill_config_dir() / "vae" / "config.json").read_text(encoding="utf-8"))
    keys = {k.removeprefix("first_stage_model.").removeprefix("vae."): v for k, v in tensors.items()}
    ldm = any(k.startswith("encoder.down.") for k in keys)
    if ldm:
        levels = _count(keys, r"encoder\.down\.(\d+)\.")
        channels = [keys[f"encoder.down.{i}.block.0.conv1.weight"][0][0] for i in range(levels)]
        per_block = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    else:
        levels = _count(keys, r"encoder\.down_blocks\.(\d+)\.")
        channels = [keys[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0][0] for i in range(levels)]
        per_block = _count(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    config.update(
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        layers_per_block=per_block,
        latent_channels=keys["decoder.conv_in.weight"][0][1],
        norm_num_groups=min(32, min(channels) // 2),
        use_quant_conv="quant_conv.weight" in keys,
        use_post_quant_conv="post_quant_conv.weight" in keys,
    )
    return config, ldm


def _link(target: str | Path, where: Path) -> None:
    if where.is_symlink() or where.exists():
        where.unlink()
    try:
        os.symlink(os.path.abspath(target), where)
    except OSError:  # no symlinks here (Windows without developer mode): a copy still works
        shutil.copyfile(target, where)


def _tokenizer(source: str, dest: Path, max_length: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    copied = [f for f in TOKENIZER_FILES if (Path(source) / f).is_file()]
    if not copied:
        raise AssembleError(f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    for name in copied:
        shutil.copyfile(Path(source) / name, dest / name)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    config["model_max_length"] = max_length
    config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")


def assemble(pick: dict[str, Any], base: Path) -> list[str]:
    """Write the diffusers folder at `base` from the picked single files; returns what was done, one line each."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    base = Path(base)
    if (base / "model_index.json").is_file() and not (base / ASSEMBLED_FILE).is_file():
        return [f"kept {base} (a diffusers folder is there)"]
    missing = missing_pieces(pick)
    if missing:
        raise AssembleError("cannot assemble the base folder without: " + ", ".join(missing))
    shipped = fill_config_dir()
    base.mkdir(parents=True, exist_ok=True)
    (base / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=1), encoding="utf-8")
    shutil.copytree(shipped / "scheduler", base / "scheduler", dirs_exist_ok=True)
    (base / "transformer").mkdir(exist_ok=True)
    fill = next(iter(pick["transformers"]["fill"].values()))
    (base / "transformer" / "config.json").write_text(json.dumps(transformer_config(Path(fill)), indent=1))

    clip_positions = _header(Path(pick["clip"]))
    positions = {k.removeprefix("text_model."): v for k, v in clip_positions.items()}
    _tokenizer(pick["tokenizer"], base / "tokenizer", positions["embeddings.position_embedding.weight"][0][0])
    _tokenizer(pick["tokenizer_2"], base / "tokenizer_2", 512)
    tokenizer = AutoTokenizer.from_pretrained(str(base / "tokenizer"), local_files_only=True)

    (base / "text_encoder").mkdir(exist_ok=True)
    clip_config(Path(pick["clip"]), tokenizer).save_pretrained(str(base / "text_encoder"))
    _link(pick["clip"], base / "text_encoder" / "model.safetensors")
    (base / "text_encoder_2").mkdir(exist_ok=True)
    t5_config(Path(pick["t5"])).save_pretrained(str(base / "text_encoder_2"))
    _link(pick["t5"], base / "text_encoder_2" / "model.safetensors")

    (base / "vae").mkdir(exist_ok=True)
    config, ldm = vae_config(_header(Path(pick["vae"])))
    (base / "vae" / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    weights = base / "vae" / "diffusion_pytorch_model.safetensors"
    if ldm:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        converted = convert_ldm_vae_checkpoint(load_file(pick["vae"]), config)
        if weights.is_symlink():
            weights.unlink()
        save_file({k: v.contiguous() for k, v in converted.items()}, str(weights))
    else:
        _link(pick["vae"], weights)
    sources = {k: pick[k] for k in NEEDED}
    (base / ASSEMBLED_FILE).write_text(json.dumps(sources, indent=1), encoding="utf-8")
    return [f"assembled {base} from {', '.join(sorted(set(sources.values())))}"]


def has_transformer_weights(base: Path) -> bool:
    """Whether the base folder holds transformer weights (an assembled one has only the config)."""
    folder = Path(base) / "transformer"
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json"))
