"""DASR's graph rewrite for export: the per-sample grouped convolution, batch-size-free."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch import DAConv


def per_sample_depthwise_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depth-wise k×k convolution with a different kernel per sample (N×C×k×k), zero padded.

    The shifted-sum form has no batch size in any attribute, unlike a grouped convolution with
    ``groups = N·C`` whose ``group`` attribute would freeze the batch size into the graph.
    """
    k = kernel.shape[-1]
    pad = (k - 1) // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    out = None
    for i in range(k):
        for j in range(k):
            term = padded[:, :, i:i + h, j:j + w] * kernel[:, :, i, j, None, None]
            out = term if out is None else out + term
    return out


class PerSampleDAConv(nn.Module):
    """DASR's ``DAConv`` (same parameters) computed with ``per_sample_depthwise_conv``."""

    def __init__(self, da: DAConv):
        super().__init__()
        self.da = da

    def forward(self, x: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
        da = self.da
        b, c = x.shape[:2]
        kernel = da.kernel(deg).reshape(b, c, da.kernel_size, da.kernel_size)
        out = da.conv(da.relu(per_sample_depthwise_conv(x, kernel)))
        return out + da.ca(x, deg)


def with_per_sample_convs(net: nn.Module) -> nn.Module:
    """``net`` with every ``DAConv`` replaced by ``PerSampleDAConv`` (in place; export copies first)."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DAConv):
                setattr(parent, name, PerSampleDAConv(child))
    return net
