"""PSNR and SSIM on the BT.601 luma channel, as the SR papers report them.

The published tables (SRCNN, VDSR, EDSR, ...) come from MATLAB scripts: Y = 16 + 65.481R +
128.553G + 24.966B on [0, 1] RGB (``rgb2ycbcr``), ``scale`` pixels shaved from every border,
PSNR with peak 255, and Wang et al.'s ``ssim_index`` (11×11 Gaussian window, σ = 1.5,
K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, mean of the SSIM map). Everything here works
per image on uint8 arrays; averaging over a data set is the caller's job.

Gray images follow the MATLAB scripts too: they skip ``rgb2ycbcr`` (``if size(im, 3) == 3``), so a
gray HR image is scored on its own 0..255 values, not on 16 + 219/255·gray. The two differ by a
factor 219/255 on every error, i.e. 1.32 dB of PSNR on that image; with this convention bicubic on
Set14 (whose ``bridge`` is gray) gives the published 30.24 / 27.55 / 26.00 dB, with the other one
30.33 / 27.63 / 26.09. An RGB image compared with a gray one (a model's RGB output for a gray
input) is reduced to full-range luma, (Y - 16)·255/219, which is the gray value itself when
R = G = B.
"""
from __future__ import annotations

import numpy as np

# BT.601 studio-range luma weights for RGB in [0, 1] (the same matrix as models/color.py)
LUMA_WEIGHTS = np.array([65.481, 128.553, 24.966])
LUMA_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0


def luma(img: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB -> H×W float64 BT.601 Y on the [0, 255] scale (16..235 for 0..255 input)."""
    if not is_rgb(img):
        raise ValueError(f"expected an H×W×3 RGB image, got shape {img.shape}")
    return LUMA_OFFSET + (img.astype(np.float64) / 255.0) @ LUMA_WEIGHTS


def gray_level(img: np.ndarray) -> np.ndarray:
    """H×W gray (or H×W×1) -> its values; H×W×3 RGB -> full-range luma (Y - 16)·255/219."""
    if is_rgb(img):
        return (luma(img) - LUMA_OFFSET) * (255.0 / LUMA_WEIGHTS.sum())
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2:
        raise ValueError(f"expected an H×W×3 RGB or H×W gray image, got shape {img.shape}")
    return img.astype(np.float64)


def is_rgb(img: np.ndarray) -> bool:
    return img.ndim == 3 and img.shape[2] == 3


def shave_border(img: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return img
    return img[border:-border, border:-border]


def _luma_pair(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """The two channels the metrics compare: BT.601 Y for RGB pairs, gray levels otherwise."""
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"SR image is {sr.shape[1]}×{sr.shape[0]}, HR is {hr.shape[1]}×{hr.shape[0]}")
    channel = luma if is_rgb(sr) and is_rgb(hr) else gray_level
    return shave_border(channel(sr), border), shave_border(channel(hr), border)


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int = 0) -> float:
    """PSNR (dB, peak 255) between the luma of two uint8 images, ``shave`` pixels cut per border."""
    a, b = _luma_pair(sr, hr, shave)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)``.

    fspecial's 2-D window is the outer product of this vector with itself (it normalises the
    2-D sum, which equals the product of the 1-D sums), so filtering separably is exact.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(g gᵀ, img, 'valid')`` for a symmetric separable window: output shrinks by len(g)-1."""
    k = len(g)
    h, w = img.shape
    if h < k or w < k:
        raise ValueError(f"image of {w}×{h} is smaller than the {k}×{k} SSIM window")
    rows = sum(g[i] * img[i:h - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[:, i:w - k + 1 + i] for i in range(k))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wang et al.'s SSIM map of two float images on the [0, L] scale ('valid' region only)."""
    g = gaussian_window_1d()
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    mu_a, mu_b = filter_valid(a, g), filter_valid(b, g)
    var_a = filter_valid(a * a, g) - mu_a * mu_a
    var_b = filter_valid(b * b, g) - mu_b * mu_b
    cov = filter_valid(a * b, g) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int = 0) -> float:
    """Mean SSIM between the luma of two uint8 images, ``shave`` pixels cut per border."""
    a, b = _luma_pair(sr, hr, shave)
    return float(ssim_map(a, b).mean())
