"""DASR's degradation model on the fly: LR = (HR ⊗ k)↓s + n.

k: 21×21 Gaussian kernels, isotropic (σ uniform in a range) or anisotropic (two σ and a
rotation); ↓s: MATLAB bicubic (the same as evaluation, in torch); n: Gaussian noise. Every
sample of a batch gets its own kernel and noise level, returned so tests can check them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from srserve.models.resize import BicubicDownsample


def kernel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) offsets from the centre of a size×size kernel."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    return torch.meshgrid(r, r, indexing="ij")


def quadratic_form(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int = 21) -> torch.Tensor:
    """B×size×size values of xᵀΣ⁻¹x, Σ with principal widths (σx, σy) rotated by θ: the distance
    every Gaussian-family kernel (Gaussian, generalised Gaussian, plateau) is a function of."""
    yy, xx = kernel_grid(size)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    return (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2


def normalise(kernels: torch.Tensor) -> torch.Tensor:
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def gaussian_kernels(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int = 21) -> torch.Tensor:
    """B×size×size normalised kernels with principal widths (σx, σy) rotated by θ."""
    return normalise(torch.exp(-0.5 * quadratic_form(sigma_x, sigma_y, theta, size)))


def random_kernels(batch: int, sigma_range: tuple[float, float], anisotropic: bool, generator: torch.Generator,
                   size: int = 21) -> torch.Tensor:
    lo, hi = sigma_range
    sx = lo + (hi - lo) * torch.rand(batch, generator=generator)
    if anisotropic:
        sy = lo + (hi - lo) * torch.rand(batch, generator=generator)
        theta = math.pi * torch.rand(batch, generator=generator)
    else:
        sy, theta = sx, torch.zeros(batch)
    return gaussian_kernels(sx, sy, theta, size)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per-sample blur of N×C×H×W by N×k×k kernels, one grouped conv; reflect padding (replicate
    for images no larger than the kernel's radius, which reflection cannot pad)."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    mode = "reflect" if k // 2 < min(h, w) else "replicate"
    padded = F.pad(x, (k // 2,) * 4, mode=mode).reshape(1, n * c, h + k - 1, w + k - 1)
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def degrade(hr: torch.Tensor, scale: int, kernels: torch.Tensor, noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """HR in [0, 1] -> quantised LR in [0, 1]. ``noise``: per-sample σ on the 0-255 scale."""
    lr = BicubicDownsample(scale).to(hr.device)(blur(hr, kernels))
    if noise is not None:
        lr = lr + torch.randn(lr.shape, generator=generator).to(lr) * (noise.to(lr) / 255).view(-1, 1, 1, 1)
    return lr.clamp(0, 1).mul(255).round().div(255)
