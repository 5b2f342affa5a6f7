"""The depth annotator's network: MiDaS v3 DPT-Hybrid as scepter's MidasDetector builds it (backbone
'vitb_rn50_384', readout 'project', 256 fusion features, non-negative head).

Written here rather than taken from timm: timm needs torchvision, whose wheels are tied to one CUDA build of
torch (the CPU torch of CI has none). The parts follow timm's `vit_base_resnet50_384`, which the authors' weights
were trained in; checked offline against the authors' own DPTDepthModel on timm 1.0.31 with the same random
weights through convert.py (368 keys placed, depth maps equal to 4e-6 at 384x384, 256x448 and 512x320):

- a ResNet-v2 stem and three bottleneck stages (not pre-activation) with weight-standardised convolutions
  (eps 1e-8) and TensorFlow-style "same" padding, GroupNorm(32) + ReLU, a "same"-padded 3x3/2 max pool;
- a 1x1 projection of the stride-16 features to ViT tokens, a class token, the 24x24 position grid resized
  bilinearly to the image's grid, 12 pre-norm transformer blocks (LayerNorm eps 1e-6, exact GELU);
- DPT reassembly: stage 1 and 2 outputs (stride 4, 8) as they are; tokens after blocks 9 and 12 (the last block's
  output before the final norm) with the class token projected in ("project" readout), 1x1 convolutions, the
  second one also downsampled to stride 32;
- four fusion blocks (residual conv units, 2x bilinear with aligned corners, 1x1 out conv) and the head
  (3x3 conv, 2x bilinear, 3x3 conv, ReLU, 1x1 conv to one channel, ReLU).

`DepthConfig` holds the sizes (the authors' values are the defaults); the tiny test model only changes widths and
depths. Parameter names are ours; `weights.depth_key` maps the authors' names onto them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

GROUPS = 32  # timm's GroupNormAct default for ResNet-v2
STD_EPS = 1e-8  # the hybrid ViT's weight-standardisation eps
LN_EPS = 1e-6
PATCH = 16


@dataclass(frozen=True)
class DepthConfig:
    stem: int = 64
    stages: tuple[int, ...] = (256, 512, 1024)  # output channels; bottlenecks are a quarter as wide
    depths: tuple[int, ...] = (3, 4, 9)
    dim: int = 768
    blocks: int = 12
    heads: int = 12
    grid: int = 24  # position grid of the 384 px pretraining
    hooks: tuple[int, int] = (8, 11)  # 0-based transformer blocks read by the reassembly
    features: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthConfig:
        """From `to_dict()` after a JSON round trip (lists back to tuples); unknown keys are ignored."""
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one side: (before, after), the larger half after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = _same_pad(x.shape[-2], kernel, stride)
    left, right = _same_pad(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class StdConv(nn.Conv2d):
    """Weight-standardised convolution (each filter to zero mean, unit variance) with 'SAME' padding, no bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        flat = w.reshape(w.shape[0], -1)
        var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
        w = ((flat - mean) / torch.sqrt(var + STD_EPS)).reshape_as(w)
        return F.conv2d(_pad_same(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class GroupNormReLU(nn.GroupNorm):
    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(min(GROUPS, channels), channels, eps=1e-5)  # fewer groups only in tiny test models
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return torch.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = cout // 4
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(StdConv(cin, cout, 1, stride), GroupNormReLU(cout, relu=False))
        self.conv1, self.norm1 = StdConv(cin, mid, 1), GroupNormReLU(mid)
        self.conv2, self.norm2 = StdConv(mid, mid, 3, stride), GroupNormReLU(mid)
        self.conv3, self.norm3 = StdConv(mid, cout, 1), GroupNormReLU(cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        y = self.norm1(self.conv1(x))
        y = self.norm2(self.conv2(y))
        y = self.norm3(self.conv3(y))
        return torch.relu(y + skip)


class ResNetStem(nn.Module):
    """Stem and stages; returns every stage's output."""

    def __init__(self, config: DepthConfig) -> None:
        super().__init__()
        self.conv = StdConv(3, config.stem, 7, 2)
        self.norm = GroupNormReLU(config.stem)
        stages: list[nn.Module] = []
        cin = config.stem
        for i, (cout, depth) in enumerate(zip(config.stages, config.depths)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *(Bottleneck(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(depth))
                )
            )
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.norm(self.conv(x))
        x = F.max_pool2d(_pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(head dim)) v, fused (as timm's Attention runs it today); 4096 tokens at 1024 px.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Reassemble(nn.Module):
    """Tokens of one transformer block -> a feature map: class token projected in, 1x1 conv, optional 3x3/2."""

    def __init__(self, dim: int, out: int, downsample: bool) -> None:
        super().__init__()
        self.readout = nn.Linear(2 * dim, dim)
        self.conv = nn.Conv2d(dim, out, 1)
        self.down = nn.Conv2d(out, out, 3, stride=2, padding=1) if downsample else None

    def forward(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        cls = tokens[:, :1].expand(-1, tokens.shape[1] - 1, -1)
        x = F.gelu(self.readout(torch.cat([tokens[:, 1:], cls], dim=-1)))
        x = self.conv(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], rows, cols))
        return x if self.down is None else self.down(x)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class Fusion(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.skip_unit = ResidualUnit(channels)  # applied to the skip input (unused by the deepest block)
        self.unit = ResidualUnit(channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out(x)


class DepthNet(nn.Module):
    def __init__(self, config: DepthConfig = DepthConfig()) -> None:
        super().__init__()
        self.config = config
        d, f = config.dim, config.features
        self.backbone = ResNetStem(config)
        self.proj = nn.Conv2d(config.stages[-1], d, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid * config.grid, d))
        self.blocks = nn.ModuleList(Block(d, config.heads) for _ in range(config.blocks))
        self.reassemble3 = Reassemble(d, d, downsample=False)
        self.reassemble4 = Reassemble(d, d, downsample=True)
        widths = (config.stages[0], config.stages[1], d, d)
        self.adapt = nn.ModuleList(nn.Conv2d(w, f, 3, padding=1, bias=False) for w in widths)
        self.fusion = nn.ModuleList(Fusion(f) for _ in range(4))  # [0] fuses stride 4 ... [3] the deepest
        self.head1 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.head2 = nn.Conv2d(f // 2, 32, 3, padding=1)
        self.head3 = nn.Conv2d(32, 1, 1)

    def _positions(self, rows: int, cols: int) -> torch.Tensor:
        g = self.config.grid
        grid = self.pos_embed[0, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """1x3xHxW in [-1, 1] (sides multiples of 32) -> 1xHxW relative inverse depth (>= 0)."""
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        stages = self.backbone(x)
        tokens = self.proj(stages[-1]).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self._positions(rows, cols)
        taps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.config.hooks:
                taps.append(tokens)
            if i >= max(self.config.hooks):
                break  # later blocks and the final norm do not reach the output
        layers = [stages[0], stages[1], self.reassemble3(taps[0], rows, cols), self.reassemble4(taps[1], rows, cols)]
        layers = [adapt(layer) for adapt, layer in zip(self.adapt, layers)]
        path = self.fusion[3](layers[3])
        for i in (2, 1, 0):
            path = self.fusion[i](path, layers[i])
        y = F.interpolate(self.head1(path), scale_factor=2, mode="bilinear", align_corners=True)
        y = torch.relu(self.head3(torch.relu(self.head2(y))))
        return y.squeeze(1)
