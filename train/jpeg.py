"""JPEG compression artefacts in torch, batched and on the batch's device.

The Pillow round trip (``srserve.realworld.jpeg_roundtrip``) is exact libjpeg but runs per
sample on the CPU, which on a GPU costs more than the training step it feeds (BENCHMARKS.md,
"Degradation pipeline"). This is baseline JPEG as libjpeg does it with Pillow's defaults, in
floating point instead of libjpeg's integer arithmetic:

- JFIF RGB -> YCbCr (rounded to 8 bits), chroma 4:2:0 (2×2 means);
- edges padded by replication to whole 16×16 macroblocks;
- 8×8 orthonormal DCT-II of the level-shifted planes, quantised with the standard tables (ITU
  T.81, Annex K) scaled for the quality as libjpeg does (``jpeg_set_quality``: 5000 // q below 50,
  200 − 2q from 50, clamped to 1…255);
- dequantise, inverse DCT, clamp to 0…255, round; chroma upsampled with libjpeg's "fancy"
  triangle filter (3/4 nearest, 1/4 next: bilinear with half-pixel centres); YCbCr -> RGB.

Its quantisation tables equal Pillow's at every quality; it differs from Pillow only by rounding
(libjpeg's integer DCT): on Set14's HR photos the quality loss agrees within 0.01 dB and the
outputs are 46-48 dB apart (``tests/test_jpeg_torch.py`` bounds the difference). Gradients are not needed (the degradations make training inputs), so the
rounding is plain ``round``, not DiffJPEG's differentiable approximation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168735892, -0.331264108, 0.5), (0.5, -0.418687589, -0.081312411))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136286, -0.714136286), (1.0, 1.772, 0.0))


def quality_tables(qualities: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """N×8×8 luma and chroma quantisation tables for per-sample qualities (1…100), libjpeg's scaling."""
    q = qualities.to(device=device, dtype=torch.float64).clamp(1, 100)
    q = q.round()
    scale = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q).view(-1, 1, 1)  # libjpeg: integer division

    def scaled(base) -> torch.Tensor:
        table = torch.tensor(base, dtype=torch.float64, device=device).view(1, 8, 8)
        return torch.floor((table * scale + 50) / 100).clamp(1, 255).float()

    return scaled(LUMA_TABLE), scaled(CHROMA_TABLE)


def dct_matrix(device: torch.device) -> torch.Tensor:
    """8×8 orthonormal DCT-II: coefficients = D @ block @ Dᵀ (JPEG's FDCT up to its 1/8 scale)."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float().to(device)


def blocks(plane: torch.Tensor) -> torch.Tensor:
    """N×H×W (multiples of 8) -> N×(H/8)×(W/8)×8×8."""
    n, h, w = plane.shape
    return plane.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def unblocks(b: torch.Tensor) -> torch.Tensor:
    n, bh, bw = b.shape[:3]
    return b.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def quantise_plane(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise, dequantise, inverse DCT of one N×H×W plane in 0…255."""
    b = blocks(plane - 128)
    coefficients = d @ b @ d.T
    t = table[:, None, None]
    restored = d.T @ (torch.round(coefficients / t) * t) @ d
    return (unblocks(restored) + 128).clamp(0, 255).round()


def jpeg_torch(x: torch.Tensor, qualities: torch.Tensor) -> torch.Tensor:
    """JPEG round trip of N×3×H×W in [0, 1] at per-sample qualities, on x's device; returns
    N×3×H×W in [0, 1] on the 8-bit grid."""
    n, _, h, w = x.shape
    device = x.device
    rgb = x.float().clamp(0, 1).mul(255).round()
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    ycc = torch.einsum("ij,njhw->nihw", torch.tensor(RGB_TO_YCBCR, device=device), rgb)
    ycc = (ycc + torch.tensor([0.0, 128.0, 128.0], device=device).view(1, 3, 1, 1)).round().clamp(0, 255)
    luma_table, chroma_table = quality_tables(qualities, device)
    d = dct_matrix(device)
    y = quantise_plane(ycc[:, 0], luma_table, d)
    chroma = F.avg_pool2d(ycc[:, 1:], 2).round()  # 4:2:0, integer samples as libjpeg's
    cb = quantise_plane(chroma[:, 0], chroma_table, d)
    cr = quantise_plane(chroma[:, 1], chroma_table, d)
    chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="bilinear", align_corners=False).round()
    ycc = torch.cat([y[:, None], chroma - 128], 1)
    out = torch.einsum("ij,njhw->nihw", torch.tensor(YCBCR_TO_RGB, device=device), ycc)
    return out[:, :, :h, :w].clamp(0, 255).round().div(255)
