"""Building blocks shared by the EDSR family (EDSR, MDSR, DASR).

Module layouts follow EDSR-PyTorch exactly, so parameter names equal the official keys.
"""
from __future__ import annotations

import math

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def default_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """1x1 conv that subtracts (sign=-1) or adds (sign=+1) the DIV2K mean; stored as parameters
    because the official checkpoints carry them (``sub_mean``/``add_mean``)."""

    def __init__(self, rgb_range: float = 255.0, rgb_mean=DIV2K_RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """conv -> ReLU -> conv, scaled by ``res_scale``, plus identity (no batch norm)."""

    def __init__(self, n_feats: int, kernel_size: int = 3, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            default_conv(n_feats, n_feats, kernel_size), nn.ReLU(True), default_conv(n_feats, n_feats, kernel_size)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: log2(scale) x (conv to 4F, PixelShuffle(2)), or one conv to 9F and
    PixelShuffle(3). Indices 0, 2, 4 are the convs, as in the official checkpoints."""

    def __init__(self, scale: int, n_feats: int):
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0 and scale > 1:
            for _ in range(int(math.log2(scale))):
                layers += [default_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [default_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"sub-pixel upsampler supports scales 2, 3, 4, 8; got {scale}")
        super().__init__(*layers)


def upsampler_scale(state_dict: dict, prefix: str, n_feats: int) -> int:
    """Infers the factor of an :class:`Upsampler` from its conv shapes under ``prefix``."""
    first = state_dict[f"{prefix}0.weight"].shape[0]
    if first == 9 * n_feats:
        return 3
    if first != 4 * n_feats:
        raise ValueError(f"{prefix}0 has {first} output channels, expected {4 * n_feats} or {9 * n_feats}")
    stages = 1
    while f"{prefix}{2 * stages}.weight" in state_dict:
        stages += 1
    return 2**stages


def upsampler_radius(scale: int) -> float:
    """Receptive radius (LR pixels) the upsampler convs add: 1 px at each resolution stage."""
    if scale == 3:
        return 1.0
    return sum(1.0 / 2**i for i in range(int(math.log2(scale))))


def count_indexed(state_dict: dict, pattern: str) -> int:
    """Number of consecutive i for which ``pattern.format(i)`` is a key."""
    n = 0
    while pattern.format(n) in state_dict:
        n += 1
    return n


def subpixel_upsampler_maps(n_feats: int, scale: int) -> float:
    """Maps alive in the last sub-pixel stage: its input, the conv output and the shuffled copy."""
    if scale == 3:
        return n_feats + 2 * 9 * n_feats
    stage_in = n_feats * (scale / 2) ** 2
    return stage_in + 2 * n_feats * scale**2


def residual_trunk_activation_maps(n_feats: int, scale: int, trunk_maps: int) -> float:
    """EDSR-family peak maps per LR pixel: the residual trunk or the last upsampling stage,
    plus the HR input/output copies."""
    return max(trunk_maps * n_feats, subpixel_upsampler_maps(n_feats, scale)) + 6 * scale * scale + 3
