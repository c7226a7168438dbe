from __future__ import annotations

import torch
from torch import nn

from ..common import count_indexed


class ConvReLUBlock(nn.Module):
    def __init__(self, n_feats: int):
        super().__init__()
        self.conv = nn.Conv2d(n_feats, n_feats, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class VDSR(nn.Module):
    """``num_layers`` weight layers (input conv, num_layers-2 conv+ReLU, output conv), no biases;
    predicts the residual over the bicubic-upscaled Y input. ``scales`` is metadata only: the
    network itself is scale-agnostic."""

    def __init__(self, num_layers: int = 20, n_feats: int = 64, scales=(2, 3, 4)):
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.input = nn.Conv2d(1, n_feats, 3, padding=1, bias=False)
        self.residual_layer = nn.Sequential(*[ConvReLUBlock(n_feats) for _ in range(num_layers - 2)])
        self.output = nn.Conv2d(n_feats, 1, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = self.residual_layer(self.relu(self.input(y)))
        return self.output(out) + y


def detect_vdsr(sd: dict) -> dict | None:
    if "input.weight" not in sd or "output.weight" not in sd or "residual_layer.0.conv.weight" not in sd:
        return None
    return {
        "num_layers": count_indexed(sd, "residual_layer.{}.conv.weight") + 2,
        "n_feats": sd["input.weight"].shape[0],
        "scales": [2, 3, 4],
    }


def vdsr_receptive_radius(h: dict) -> float:
    # num_layers 3x3 convs at HR size, plus 2 LR pixels for the bicubic taps
    return h["num_layers"] / min(h["scales"]) + 2
