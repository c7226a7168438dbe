"""PSNR/SSIM on luma against independent computations (closed forms and a direct-loop SSIM)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from srserve.metrics import gray_level, luma, psnr_y, ssim_y


def random_rgb(h: int, w: int, seed: int = 0, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(h, w, 3), dtype=np.uint8)


def test_luma_matches_bt601_studio_range():
    colors = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(luma(colors)[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-9)


def test_psnr_of_a_constant_offset_is_closed_form():
    hr = random_rgb(40, 30, low=20, high=200)
    sr = hr + np.uint8(5)  # every channel +5 -> Y +5·219/255 everywhere
    expected = 10 * math.log10(255**2 / (5 * 219 / 255) ** 2)
    assert psnr_y(sr, hr, shave=2) == pytest.approx(expected, abs=1e-9)


def test_psnr_shave_removes_exactly_the_border():
    hr = random_rgb(32, 32)
    sr = hr.copy()
    sr[:3] = 0  # damage only the top 3 rows
    assert psnr_y(sr, hr, shave=3) == math.inf
    assert psnr_y(sr, hr, shave=2) < 40


def test_psnr_uses_luma_only():
    hr = random_rgb(24, 24, low=30, high=220)
    # a chroma-only change: +d in R and compensating G so that Y stays within float rounding
    sr = hr.astype(np.int16)
    sr[..., 0] += 10
    sr[..., 2] -= np.int16(round(10 * 65.481 / 24.966))
    changed_y = np.abs(luma(sr.clip(0, 255).astype(np.uint8)) - luma(hr)).max()
    assert changed_y < 0.2  # the construction is (almost) luma-neutral
    assert psnr_y(sr.clip(0, 255).astype(np.uint8), hr) > 60


def test_gray_images_are_scored_on_their_values():
    """MATLAB's scripts skip rgb2ycbcr for gray images: error = gray difference, not ·219/255."""
    hr = np.random.default_rng(1).integers(20, 200, size=(30, 30), dtype=np.uint8)
    sr_gray = hr + np.uint8(4)
    sr_rgb = np.repeat(sr_gray[:, :, None], 3, axis=2)  # a model's RGB output for a gray input
    raw = 10 * math.log10(255**2 / 4**2)
    assert psnr_y(sr_gray, hr) == pytest.approx(raw, abs=1e-9)
    assert psnr_y(sr_rgb, hr) == pytest.approx(raw, abs=1e-9)
    # both RGB: the studio-range luma shrinks the error by 219/255, i.e. +1.32 dB
    hr_rgb = np.repeat(hr[:, :, None], 3, axis=2)
    assert psnr_y(sr_rgb, hr_rgb) - raw == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    np.testing.assert_allclose(gray_level(sr_rgb), sr_gray.astype(float), atol=1e-9)


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError):
        psnr_y(random_rgb(10, 10), random_rgb(10, 12))


def test_ssim_of_identical_images_is_one():
    img = random_rgb(40, 36)
    assert ssim_y(img, img, shave=4) == pytest.approx(1.0, abs=1e-12)


def fspecial_gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """MATLAB fspecial('gaussian') written out directly in 2-D."""
    r = (size - 1) / 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    w = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return w / w.sum()


def ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index, one window position at a time ('valid' positions only)."""
    w = fspecial_gaussian()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_direct_loop_implementation():
    hr = random_rgb(21, 19, seed=2)
    noise = np.random.default_rng(3).integers(-25, 26, size=hr.shape)
    sr = (hr.astype(int) + noise).clip(0, 255).astype(np.uint8)
    shave = 2
    expected = ssim_direct(luma(sr)[shave:-shave, shave:-shave], luma(hr)[shave:-shave, shave:-shave])
    assert 0.2 < expected < 0.99  # a meaningful, non-trivial value
    assert ssim_y(sr, hr, shave=shave) == pytest.approx(expected, abs=1e-10)


def test_ssim_is_symmetric_and_drops_with_noise():
    hr = random_rgb(32, 32, seed=4)
    rng = np.random.default_rng(5)
    mild = (hr.astype(int) + rng.integers(-5, 6, size=hr.shape)).clip(0, 255).astype(np.uint8)
    strong = (hr.astype(int) + rng.integers(-60, 61, size=hr.shape)).clip(0, 255).astype(np.uint8)
    assert ssim_y(mild, hr) == pytest.approx(ssim_y(hr, mild), abs=1e-12)
    assert 1 > ssim_y(mild, hr) > ssim_y(strong, hr)


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="SSIM window"):
        ssim_y(random_rgb(14, 14), random_rgb(14, 14), shave=2)
