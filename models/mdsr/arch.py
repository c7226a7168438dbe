from __future__ import annotations

import torch
from torch import nn

from ..common import MeanShift, ResBlock, Upsampler, count_indexed, default_conv, upsampler_radius, upsampler_scale


class MDSR(nn.Module):
    """``forward(x, scale)`` routes through the pre-process head and upsampler of ``scale``.

    ``head_forward``/``body_forward``/``tail_forward`` expose the three stages so a server can
    batch the shared body across requests of different scales.
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, scales=(2, 3, 4), rgb_range: float = 255.0):
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.pre_process = nn.ModuleList(
            nn.Sequential(ResBlock(n_feats, 5), ResBlock(n_feats, 5)) for _ in self.scales
        )
        self.body = nn.Sequential(*[ResBlock(n_feats, 3) for _ in range(n_resblocks)], default_conv(n_feats, n_feats, 3))
        self.upsample = nn.ModuleList(Upsampler(s, n_feats) for s in self.scales)
        self.tail = nn.Sequential(default_conv(n_feats, 3, 3))

    def scale_index(self, scale: int) -> int:
        try:
            return self.scales.index(int(scale))
        except ValueError:
            raise ValueError(f"MDSR has heads for scales {list(self.scales)}, not {scale}") from None

    def head_forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return self.pre_process[self.scale_index(scale)](self.head(self.sub_mean(x)))

    def body_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x

    def tail_forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return self.add_mean(self.tail(self.upsample[self.scale_index(scale)](x)))

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return self.tail_forward(self.body_forward(self.head_forward(x, scale)), scale)


def detect_mdsr(sd: dict) -> dict | None:
    if "pre_process.0.0.body.0.weight" not in sd or "upsample.0.0.weight" not in sd:
        return None
    n_feats = sd["head.0.weight"].shape[0]
    n_heads = count_indexed(sd, "upsample.{}.0.weight")
    return {
        "n_resblocks": count_indexed(sd, "body.{}.body.0.weight"),
        "n_feats": n_feats,
        "scales": [upsampler_scale(sd, f"upsample.{k}.", n_feats) for k in range(n_heads)],
    }


def mdsr_receptive_radius(h: dict) -> float:
    # head + 2 pre-process blocks of two 5x5 convs + body + upsampler + tail at HR
    worst = max(h["scales"], key=upsampler_radius)
    return 1 + 8 + 2 * h["n_resblocks"] + 1 + upsampler_radius(worst) + 1 / min(h["scales"])
