"""Annotator weights: the map from the authors' state-dict keys to our modules, and loading (safetensors only).

A converted file carries its network's sizes in the safetensors metadata (`ace_bridge_annotator`: contour|depth,
`config`: JSON), so the same loader reads the authors' full-size weights and the tiny test ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from ace_protocol.errors import ErrorCode

from bridge_server.engine.annotators import rules
from bridge_server.engine.annotators.contour import ContourConfig, ContourNet
from bridge_server.engine.annotators.dpt import DepthConfig, DepthNet
from bridge_server.engine.base import EngineError
from bridge_server.models.layout import ANNOTATOR_FILES

KINDS = tuple(ANNOTATOR_FILES)  # ("contour", "depth")
PULL_HINT = "run `ace-bridge models pull --annotators`"

# (authors' key pattern, our key) for scepter's ContourInference (model0..model4 Sequentials).
_CONTOUR_KEYS: list[tuple[str, str]] = [
    (r"model0\.1\.(weight|bias)", r"stem.\1"),
    (r"model1\.0\.(weight|bias)", r"down1.\1"),
    (r"model1\.3\.(weight|bias)", r"down2.\1"),
    (r"model2\.(\d+)\.conv_block\.1\.(weight|bias)", r"res.\1.conv1.\2"),
    (r"model2\.(\d+)\.conv_block\.5\.(weight|bias)", r"res.\1.conv2.\2"),
    (r"model3\.0\.(weight|bias)", r"up1.\1"),
    (r"model3\.3\.(weight|bias)", r"up2.\1"),
    (r"model4\.1\.(weight|bias)", r"out.\1"),
]

_VIT = r"pretrained\.model\."
_RES = _VIT + r"patch_embed\.backbone\."
# The same for scepter's DPTDepthModel('vitb_rn50_384') around timm's hybrid ViT.
_DEPTH_KEYS: list[tuple[str, str]] = [
    (_RES + r"stem\.conv\.weight", "backbone.conv.weight"),
    (_RES + r"stem\.norm\.(weight|bias)", r"backbone.norm.\1"),
    (_RES + r"stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.weight", r"backbone.stages.\1.\2.shortcut.0.weight"),
    (_RES + r"stages\.(\d+)\.blocks\.(\d+)\.downsample\.norm\.(weight|bias)", r"backbone.stages.\1.\2.shortcut.1.\3"),
    (_RES + r"stages\.(\d+)\.blocks\.(\d+)\.(conv\d|norm\d)\.(weight|bias)", r"backbone.stages.\1.\2.\3.\4"),
    (_VIT + r"patch_embed\.proj\.(weight|bias)", r"proj.\1"),
    (_VIT + r"(cls_token|pos_embed)", r"\1"),
    (_VIT + r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (_VIT + r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"pretrained\.act_postprocess([34])\.0\.project\.0\.(weight|bias)", r"reassemble\1.readout.\2"),
    (r"pretrained\.act_postprocess([34])\.3\.(weight|bias)", r"reassemble\1.conv.\2"),
    (r"pretrained\.act_postprocess4\.4\.(weight|bias)", r"reassemble4.down.\1"),
    (r"scratch\.layer([1-4])_rn\.weight", "adapt.{0}.weight"),
    (r"scratch\.refinenet([1-4])\.resConfUnit1\.(conv[12])\.(weight|bias)", "fusion.{0}.skip_unit.{1}.{2}"),
    (r"scratch\.refinenet([1-4])\.resConfUnit2\.(conv[12])\.(weight|bias)", "fusion.{0}.unit.{1}.{2}"),
    (r"scratch\.refinenet([1-4])\.out_conv\.(weight|bias)", "fusion.{0}.out.{1}"),
    (r"scratch\.output_conv\.0\.(weight|bias)", r"head1.\1"),
    (r"scratch\.output_conv\.2\.(weight|bias)", r"head2.\1"),
    (r"scratch\.output_conv\.4\.(weight|bias)", r"head3.\1"),
]
# Authors' keys that never reach the depth output: timm's final norm and ImageNet head (the reassembly reads block
# outputs before the norm), and timm variants' optional extras.
_DEPTH_UNUSED = re.compile(_VIT + r"(norm|head|fc_norm|pre_logits)\.")


class ConversionError(Exception):
    """The authors' checkpoint does not have the layout the converter expects."""


def _map(key: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, target in table:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        if "{" in target:  # 1-based authors' index -> our 0-based list index, then the rest as is
            groups = m.groups()
            return target.format(int(groups[0]) - 1, *groups[1:])
        return m.expand(target)
    return None


def map_authors_keys(kind: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' state dict -> ours. Raises ConversionError naming every key that has no place."""
    table = _CONTOUR_KEYS if kind == "contour" else _DEPTH_KEYS
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if kind == "depth" and _DEPTH_UNUSED.match(key):
            continue
        ours = _map(key, table)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = value
    if unknown:
        raise ConversionError(f"{kind}: {len(unknown)} keys of the checkpoint have no place: {', '.join(unknown[:8])}")
    return out


def infer_config(kind: str, state: Mapping[str, torch.Tensor]) -> ContourConfig | DepthConfig:
    """The network sizes from the shapes of our (mapped) state dict."""
    try:
        if kind == "contour":
            blocks = len({k.split(".")[1] for k in state if k.startswith("res.")})
            return ContourConfig(width=int(state["stem.weight"].shape[0]), blocks=blocks)
        stage_ids = sorted({int(k.split(".")[2]) for k in state if k.startswith("backbone.stages.")})
        depths = tuple(
            len({k.split(".")[3] for k in state if k.startswith(f"backbone.stages.{s}.")}) for s in stage_ids
        )
        stages = tuple(int(state[f"backbone.stages.{s}.0.conv3.weight"].shape[0]) for s in stage_ids)
        dim = int(state["cls_token"].shape[-1])
        blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        return DepthConfig(
            stem=int(state["backbone.conv.weight"].shape[0]),
            stages=stages,
            depths=depths,
            dim=dim,
            blocks=blocks,
            heads=max(1, dim // 64),  # ViT-B: 768 wide, 12 heads of 64
            grid=grid,
            hooks=(blocks - 4, blocks - 1),  # ViT-B/12: blocks 8 and 11, as the authors' hooks
            features=int(state["adapt.0.weight"].shape[0]),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise ConversionError(f"{kind}: the checkpoint lacks a tensor the network needs ({exc})") from exc


def build(kind: str, config: ContourConfig | DepthConfig) -> ContourNet | DepthNet:
    if kind == "contour" and isinstance(config, ContourConfig):
        return ContourNet(config)
    if kind == "depth" and isinstance(config, DepthConfig):
        return DepthNet(config)
    raise ValueError(f"no annotator network {kind!r}")


def _config_from_meta(kind: str, meta: dict[str, str]) -> ContourConfig | DepthConfig:
    data = json.loads(meta.get("config", "{}"))
    return ContourConfig(**data) if kind == "contour" else DepthConfig.from_dict(data)


def load_annotator(kind: str, path: Path) -> torch.nn.Module:
    """Our network with the weights of a converted .safetensors file, eval mode, on CPU. Anything but a readable
    safetensors file of this annotator is refused with model_missing (pickles are never opened here)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EngineError(
            ErrorCode.MODEL_MISSING, f"{kind} annotator {path.name}: only .safetensors files are loaded; convert it"
        )
    if not path.is_file():
        raise EngineError(ErrorCode.MODEL_MISSING, f"mode '{kind}' needs the {kind} annotator at {path}; {PULL_HINT}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise EngineError(
            ErrorCode.MODEL_MISSING, f"{kind} annotator {path} is unreadable ({exc}); {PULL_HINT}"
        ) from exc
    if meta.get("ace_bridge_annotator") != kind:
        raise EngineError(
            ErrorCode.MODEL_MISSING,
            f"{path} is not a converted {kind} annotator (metadata says {meta.get('ace_bridge_annotator')!r}); "
            f"{PULL_HINT}",
        )
    try:
        net = build(kind, _config_from_meta(kind, meta))
        net.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EngineError(ErrorCode.MODEL_MISSING, f"{kind} annotator {path} does not fit the network ({exc})") from exc
    return net.eval().requires_grad_(False)


def annotator_metadata(kind: str, net: ContourNet | DepthNet, **extra: str) -> dict[str, str]:
    """The safetensors metadata of a converted file: which annotator, its network sizes, and `extra` (provenance)."""
    return {"ace_bridge_annotator": kind, "config": json.dumps(net.config.to_dict()), "format": "pt", **extra}


# ----------------------------------------------------------------------------------------------------------------
# Running them


@torch.inference_mode()
def run_contour(net: torch.nn.Module, rgb: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 HxWx3 contour image of uint8 HxWx3 RGB, as InfoDrawContourAnnotator: float32, no autocast."""
    height, width = rgb.shape[:2]
    x = torch.from_numpy(rules.contour_input(rgb)).to(device)
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        out = net(x)
    return rules.contour_output(out.float().cpu().numpy(), height, width)


@torch.inference_mode()
def run_depth(net: torch.nn.Module, rgb: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 HxWx3 depth image of uint8 HxWx3 RGB, as MidasDetector: float32, no autocast."""
    height, width = rgb.shape[:2]
    x = torch.from_numpy(rules.depth_input(rgb)).to(device)
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        depth = net(x)[0]
    return rules.depth_output(depth.float().cpu().numpy(), height, width)


def save_annotator(kind: str, net: ContourNet | DepthNet, path: Path, **extra: str) -> Path:
    """Write `net` as a converted annotator file (float32 tensors, our names, sizes in the metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata=annotator_metadata(kind, net, **extra))
    return path


#: The demo/test model's annotators: the authors' structure at a few channels, random weights.
TINY_CONFIGS: dict[str, ContourConfig | DepthConfig] = {
    "contour": ContourConfig(width=8, blocks=3),
    "depth": DepthConfig(stem=16, stages=(32, 32, 64), depths=(1, 1, 1), dim=64, heads=1, grid=4, features=16),
}


def save_tiny_annotators(folder: Path, seed: int = 0) -> list[Path]:
    """Random-weight contour and depth files of TINY_CONFIGS into `folder` (the tiny model's annotators/)."""
    written = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for kind, config in TINY_CONFIGS.items():
            net = build(kind, config)
            if isinstance(net, DepthNet) and net.head3.bias is not None:
                net.head3.bias.data.fill_(0.5)  # a positive output bias: the tiny depth map is not all zero
            written.append(save_annotator(kind, net, Path(folder) / ANNOTATOR_FILES[kind], tiny="true"))
    return written
