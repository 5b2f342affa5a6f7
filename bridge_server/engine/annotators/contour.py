"""The contour annotator's network: the "informative drawings" generator as scepter builds it for ACE++
(InfoDrawContourAnnotator with INPUT_NC 3, OUTPUT_NC 1, N_RESIDUAL_BLOCKS 3, SIGMOID True).

A 7x7 convolution, two stride-2 3x3 convolutions, residual blocks, two 2x transposed convolutions and a 7x7
convolution to one channel; reflection padding and instance norm without affine parameters or running
statistics throughout, ReLU between, a sigmoid at the end. `width` is the first convolution's channels (64 in the
authors' weights); it doubles at each downsampling. Checked offline against the authors' ContourInference at
full size with the same random weights through convert.py: bit-identical output. Parameter names are ours; `weights.CONTOUR_KEYS` maps the authors' names onto them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ContourConfig:
    width: int = 64
    blocks: int = 3

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(_instance_norm(self.conv1(_reflect(x, 1))))
        return x + _instance_norm(self.conv2(_reflect(y, 1)))


class ContourNet(nn.Module):
    def __init__(self, config: ContourConfig = ContourConfig()) -> None:
        super().__init__()
        w = config.width
        self.config = config
        self.stem = nn.Conv2d(3, w, 7)
        self.down1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1)
        self.res = nn.ModuleList(_Residual(4 * w) for _ in range(config.blocks))
        self.up1 = nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1)
        self.out = nn.Conv2d(w, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """1x3xHxW in [0, 1] -> 1x1x(4*ceil(H/4))x(4*ceil(W/4)) in (0, 1)."""
        x = torch.relu(_instance_norm(self.stem(_reflect(x, 3))))
        x = torch.relu(_instance_norm(self.down1(x)))
        x = torch.relu(_instance_norm(self.down2(x)))
        for block in self.res:
            x = block(x)
        x = torch.relu(_instance_norm(self.up1(x)))
        x = torch.relu(_instance_norm(self.up2(x)))
        return torch.sigmoid(self.out(_reflect(x, 3)))


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    # nn.InstanceNorm2d's defaults: per-sample, per-channel statistics, eps 1e-5, no affine, no running stats.
    return nn.functional.instance_norm(x, eps=1e-5)


def _reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    return nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
