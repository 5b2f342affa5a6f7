"""Tiny random-weight checkpoints in the ACE++ authors' key layout (scepter's annotators), for the converter tests.

The contour network is rebuilt here as the authors structure it (numbered nn.Sequential stages `model0`..`model4`,
residual blocks as `conv_block` Sequentials), independently of bridge_server's module, so its output is a
reference for ours. The depth checkpoint is a state dict with the key names and shapes of scepter's
DPTDepthModel('vitb_rn50_384') on timm's hybrid ViT, at made-up small widths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class _AuthorsResidual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class AuthorsContour(nn.Module):
    """The contour generator laid out as the authors' ContourInference(3, 1, n_residual_blocks, sigmoid=True)."""

    def __init__(self, width: int = 64, blocks: int = 3) -> None:
        super().__init__()
        w = width
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True))
        self.model1 = nn.Sequential(
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.InstanceNorm2d(2 * w),
            nn.ReLU(True),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.InstanceNorm2d(4 * w),
            nn.ReLU(True),
        )
        self.model2 = nn.Sequential(*[_AuthorsResidual(4 * w) for _ in range(blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(2 * w),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(w),
            nn.ReLU(True),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def authors_contour(path: Path, width: int = 8, blocks: int = 3, seed: int = 0) -> AuthorsContour:
    """A random contour network in the authors' layout, saved with torch.save (a pickled state dict) to `path`."""
    torch.manual_seed(seed)
    net = AuthorsContour(width, blocks).eval()
    torch.save(net.state_dict(), path)
    return net


TINY_DEPTH = {
    "stem": 16,
    "stages": (32, 32, 64),
    "depths": (1, 2, 1),
    "dim": 64,
    "blocks": 12,
    "grid": 4,
    "features": 16,
}


def authors_depth_state(seed: int = 0, **sizes: object) -> dict[str, torch.Tensor]:
    """Random weights with the authors' DPT-Hybrid key names (plus timm's final norm and an ImageNet head)."""
    s = {**TINY_DEPTH, **sizes}
    stem, stages, depths, dim, blocks, grid, f = (
        s["stem"],
        s["stages"],
        s["depths"],
        s["dim"],
        s["blocks"],
        s["grid"],
        s["features"],
    )
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def put(name: str, *shape: int, norm: bool = False) -> None:
        noise = torch.randn(*shape, generator=g) * (0.1 if norm else 0.2)
        state[name] = 1.0 + noise if norm and name.endswith("weight") else noise

    def norm(name: str, c: int) -> None:
        put(name + ".weight", c, norm=True)
        put(name + ".bias", c, norm=True)

    def linear(name: str, cout: int, cin: int, *kernel: int) -> None:
        put(name + ".weight", cout, cin, *kernel)
        put(name + ".bias", cout)

    res = "pretrained.model.patch_embed.backbone."
    put(res + "stem.conv.weight", stem, 3, 7, 7)
    norm(res + "stem.norm", stem)
    cin = stem
    for si, (cout, n) in enumerate(zip(stages, depths)):  # type: ignore[call-overload]
        mid = cout // 4
        for b in range(n):
            p = f"{res}stages.{si}.blocks.{b}."
            if b == 0:
                put(p + "downsample.conv.weight", cout, cin, 1, 1)
                norm(p + "downsample.norm", cout)
            put(p + "conv1.weight", mid, cin if b == 0 else cout, 1, 1)
            norm(p + "norm1", mid)
            put(p + "conv2.weight", mid, mid, 3, 3)
            norm(p + "norm2", mid)
            put(p + "conv3.weight", cout, mid, 1, 1)
            norm(p + "norm3", cout)
        cin = cout
    vit = "pretrained.model."
    linear(vit + "patch_embed.proj", dim, cin, 1, 1)
    put(vit + "cls_token", 1, 1, dim)
    put(vit + "pos_embed", 1, 1 + grid * grid, dim)
    for i in range(blocks):
        p = f"{vit}blocks.{i}."
        norm(p + "norm1", dim)
        linear(p + "attn.qkv", 3 * dim, dim)
        linear(p + "attn.proj", dim, dim)
        norm(p + "norm2", dim)
        linear(p + "mlp.fc1", 4 * dim, dim)
        linear(p + "mlp.fc2", dim, 4 * dim)
    norm(vit + "norm", dim)
    linear(vit + "head", 10, dim)
    for k in (3, 4):
        linear(f"pretrained.act_postprocess{k}.0.project.0", dim, 2 * dim)
        linear(f"pretrained.act_postprocess{k}.3", dim, dim, 1, 1)
    linear("pretrained.act_postprocess4.4", dim, dim, 3, 3)
    for k, width in enumerate((stages[0], stages[1], dim, dim), start=1):  # type: ignore[index]
        put(f"scratch.layer{k}_rn.weight", f, width, 3, 3)
        for unit in ("resConfUnit1", "resConfUnit2"):
            linear(f"scratch.refinenet{k}.{unit}.conv1", f, f, 3, 3)
            linear(f"scratch.refinenet{k}.{unit}.conv2", f, f, 3, 3)
        linear(f"scratch.refinenet{k}.out_conv", f, f, 1, 1)
    linear("scratch.output_conv.0", f // 2, f, 3, 3)
    linear("scratch.output_conv.2", 32, f // 2, 3, 3)
    linear("scratch.output_conv.4", 1, 32, 1, 1)
    state["scratch.output_conv.4.bias"] = torch.tensor([0.5])  # a depth map that is not all zero after the ReLU
    return state


def authors_depth(path: Path, seed: int = 0, **sizes: object) -> dict[str, torch.Tensor]:
    state = authors_depth_state(seed, **sizes)
    torch.save(state, path)
    return state
