"""One uniform front for every architecture: ``SRNet(x[, degradation])``.

Input RGB in [0, 1] at LR size (N×3×H×W), output RGB in [0, 1] at ×scale (not clamped). The
per-architecture conventions (value range, Y-only with bicubic pre-upsampling, multi-scale head
choice, degradation vector) live here and nowhere else, so the pipeline, the exporters and the
server all treat models alike. One ``SRNet`` is one network at one scale; MDSR's heads share the
wrapped network.
"""
from __future__ import annotations

import torch
from torch import nn

from .color import rgb_to_ycbcr, ycbcr_to_rgb
from .resize import BicubicUpsample
from .spec import ArchSpec


class SRNet(nn.Module):
    def __init__(self, spec: ArchSpec, net: nn.Module, scale: int):
        super().__init__()
        self.spec = spec
        self.net = net
        self.scale = int(scale)
        self.value_range = float(spec.convention.value_range)
        self.bicubic = BicubicUpsample(self.scale) if spec.convention.pre_upsample else None

    @property
    def needs_degradation(self) -> bool:
        return self.spec.needs_degradation

    def estimate_degradation(self, x: torch.Tensor) -> torch.Tensor:
        """DASR: the pooled degradation representation of a whole image (N×256)."""
        return self.net.degradation(x * self.value_range)

    def forward(self, x: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        if self.spec.convention.color == "y":
            return self._forward_luma(x)
        x = x * self.value_range
        if self.spec.needs_degradation:
            out = self.net(x, degradation)
        elif self.spec.multi_scale:
            out = self.net(x, self.scale)
        else:
            out = self.net(x)
        return out / self.value_range

    def _forward_luma(self, x: torch.Tensor) -> torch.Tensor:
        """VDSR: Y through the network on the bicubic-upscaled image, CbCr by bicubic alone."""
        up = self.bicubic(rgb_to_ycbcr(x))
        y = self.net(up[:, :1])
        return ycbcr_to_rgb(torch.cat([y, up[:, 1:]], dim=1))
