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


def symmetric_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Pads along ``dim`` mirroring with the edge repeated, as MATLAB's imresize does.

    Works for any input length (indices wrap around the mirrored period), so tiny tiles are fine.
    """
    n = x.shape[dim]
    period = torch.cat([torch.arange(n), torch.arange(n - 1, -1, -1)])
    idx = period[torch.arange(-before, n + after) % (2 * n)].to(x.device)
    return x.index_select(dim, idx)


class BicubicUpsample(nn.Module):
    """N×C×H×W -> N×C×sH×sW, equal to MATLAB ``imresize(x, s, 'bicubic')`` up to float rounding."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = int(scale)
        self.register_buffer("weight", polyphase_weights(self.scale).float().view(self.scale, 1, 1, 5), persistent=False)

    def _along_width(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = F.conv2d(symmetric_pad(x, 2, 2, 3).reshape(n * c, 1, h, w + 4), self.weight.to(x.dtype))  # (nc, s, h, w)
        return y.permute(0, 2, 3, 1).reshape(n, c, h, w * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._along_width(x)
        return self._along_width(x.transpose(2, 3)).transpose(2, 3)


def downsample_weights(scale: int) -> torch.Tensor:
    """The 4s+2 antialiased cubic taps MATLAB uses to shrink by an integer factor ``s``.

    Shrinking by 1/s samples output pixel x (1-based) at u = s·x + (1 - s)/2: the fractional
    position is the same for every x, so the resize is one strided convolution.
    """
    taps = 4 * scale + 2
    u = scale + 0.5 * (1 - scale)  # x = 1
    left = torch.floor(torch.tensor(u - 2.0 * scale))
    idx = left + torch.arange(taps, dtype=torch.float64)
    w = cubic((u - idx) / scale) / scale
    return w / w.sum(), int(left.item()) - 1  # 0-based offset of the first tap for x = 0


class BicubicDownsample(nn.Module):
    """N×C×H×W -> N×C×(H/s)×(W/s) like MATLAB ``imresize(x, 1/s, 'bicubic')`` (H, W multiples of s).

    Used on the fly by training (DASR's degradations); evaluation uses the NumPy imresize.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = int(scale)
        weights, self.offset = downsample_weights(self.scale)
        self.register_buffer("weight", weights.float().view(1, 1, 1, -1), persistent=False)

    def _along_width(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        taps = self.weight.shape[-1]
        after = max(0, (w // self.scale - 1) * self.scale + self.offset + taps - w)
        padded = symmetric_pad(x, -self.offset, after, 3)
        y = F.conv2d(padded.reshape(n * c, 1, h, -1), self.weight.to(x.dtype), stride=(1, self.scale))
        return y.reshape(n, c, h, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._along_width(x)
        return self._along_width(x.transpose(2, 3)).transpose(2, 3)

