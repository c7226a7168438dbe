"""MATLAB-exact bicubic upsampling by an integer factor as a fixed torch graph.

For an integer factor s, MATLAB's ``imresize`` (a = -0.5, kernel width 4 when enlarging)
samples output pixel o = s·j + p at input coordinate j + d_p with d_p = (p + 0.5)/s - 0.5.
Every output phase p is therefore a fixed 5-tap filter over input pixels j-2..j+2, and the
whole resize is two separable polyphase convolutions on a symmetrically padded input
(MATLAB mirrors out-of-range indices with the edge pixel repeated). Being plain conv ops with
no size-dependent weights, it traces to ONNX with dynamic height/width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


def polyphase_weights(scale: int) -> torch.Tensor:
    """s × 5 weights; row p holds the taps for output phase p over offsets -2..2."""
    offsets = torch.arange(-2, 3, dtype=torch.float64)
    rows = []
    for p in range(scale):
        d = (p + 0.5) / scale - 0.5
        w = cubic(d - offsets)
        rows.append(w / w.sum())
    return torch.stack(rows)


def symmetric_pad(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Pads ``pad`` pixels per side along ``dim`` mirroring with the edge repeated (MATLAB)."""
    n = x.shape[dim]
    if n < pad:
        return _symmetric_pad_small(x, pad, dim)
    before = x.narrow(dim, 0, pad).flip(dim)
    after = x.narrow(dim, n - pad, pad).flip(dim)
    return torch.cat([before, x, after], dim)


def _symmetric_pad_small(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    period = torch.cat([torch.arange(n), torch.arange(n - 1, -1, -1)])
    idx = period[torch.arange(-pad, n + pad) % (2 * n)].to(x.device)
    return x.index_select(dim, idx)


class BicubicUpsample(nn.Module):
    """N×C×H×W -> N×C×sH×sW, equal to MATLAB ``imresize(x, s, 'bicubic')`` up to float rounding."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = int(scale)
        self.register_buffer("weight", polyphase_weights(self.scale).float().view(self.scale, 1, 1, 5), persistent=False)

    def _along_width(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = F.conv2d(symmetric_pad(x, 2, 3).reshape(n * c, 1, h, w + 4), self.weight.to(x.dtype))  # (nc, s, h, w)
        return y.permute(0, 2, 3, 1).reshape(n, c, h, w * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._along_width(x)
        return self._along_width(x.transpose(2, 3)).transpose(2, 3)
