from __future__ import annotations

import torch
from torch import nn

from ..common import MeanShift, ResBlock, Upsampler, count_indexed, default_conv, upsampler_radius, upsampler_scale


class EDSR(nn.Module):
    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0, scale: int = 2,
                 rgb_range: float = 255.0):
        super().__init__()
        self.scale = scale
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.body = nn.Sequential(*[ResBlock(n_feats, 3, res_scale) for _ in range(n_resblocks)],
                                  default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))


def official_res_scale(n_resblocks: int, n_feats: int) -> float:
    """EDSR-PyTorch trains the r32f256 paper model with res_scale 0.1; shapes cannot show it."""
    return 0.1 if (n_resblocks, n_feats) == (32, 256) else 1.0


def detect_edsr(sd: dict) -> dict | None:
    if "head.0.weight" not in sd or "tail.1.weight" not in sd or "tail.0.0.weight" not in sd:
        return None
    if any(k.startswith(("pre_process.", "upsample.")) for k in sd):
        return None
    n_feats = sd["head.0.weight"].shape[0]
    n_resblocks = count_indexed(sd, "body.{}.body.0.weight")
    return {
        "n_resblocks": n_resblocks,
        "n_feats": n_feats,
        "res_scale": official_res_scale(n_resblocks, n_feats),
        "scale": upsampler_scale(sd, "tail.0.", n_feats),
    }


def edsr_receptive_radius(h: dict) -> float:
    # head conv + 2 per block + body conv + upsampler convs + last conv at HR
    return 1 + 2 * h["n_resblocks"] + 1 + upsampler_radius(h["scale"]) + 1 / h["scale"]
