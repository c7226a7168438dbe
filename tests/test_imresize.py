"""MATLAB ``imresize(..., 'bicubic')`` properties of srserve.models.imresize (the evaluation LR)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from srserve.models.imresize import imresize, imresize_uint8
from srserve.models.resize import BicubicUpsample

# The cubic kernel with a = -0.5 at the four distances a ×2 resize needs (by hand:
# |x| <= 1: 1.5|x|^3 - 2.5|x|^2 + 1, 1 < |x| <= 2: -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2):
#   k(0.25) = 111/128, k(0.75) = 29/128, k(1.25) = -9/128, k(1.75) = -3/128   (sum 1).
# Enlarging ×2, output pixel j (1-based) samples u = j/2 + 1/4: the nearest input sits 1/4 away,
# so out = (-3·x[k-2] + 29·x[k-1] + 111·x[k] - 9·x[k+1]) / 128 (or the mirror image), with
# x[0] = x[1], x[-1] = x[2] and x[n+1] = x[n] (MATLAB's symmetric border). For x = [10, 20, 40, 80]:
#   out[1] = (-3·20 + 29·10 + 111·10 - 9·20)/128 = 9.0625, out[2] = (-9·10 + 111·10 + 29·20 - 3·40)/128 = 11.5625, ...
UPSCALE_X2_INPUT = [10.0, 20.0, 40.0, 80.0]
UPSCALE_X2_EXPECTED = [9.0625, 11.5625, 16.5625, 23.828125, 33.359375, 49.53125, 72.34375, 83.75]
# Shrinking ×1/2 stretches the kernel (antialiasing): weights 0.5·k(d/2) at d = ±0.5, ±1.5, ±2.5, ±3.5,
# i.e. (-3, -9, 29, 111, 111, 29, -9, -3)/256 around u = 2j - 1/2 (mirrored: x[0] = x[1],
# x[-1] = x[2], x[-2] = x[3]). For [10, 20, 40, 80, 160, 80, 40, 20]:
#   out[1] = (-3·40 - 9·20 + 29·10 + 111·10 + 111·20 + 29·40 - 9·80 - 3·160)/256 = 12.8125, ...
DOWNSCALE_X2_INPUT = [10.0, 20.0, 40.0, 80.0, 160.0, 80.0, 40.0, 20.0]
DOWNSCALE_X2_EXPECTED = [12.8125, 68.671875, 115.078125, 28.4375]


def rows_of(vector, height: int) -> np.ndarray:
    """An image whose every row is ``vector``: the vertical resize leaves it unchanged."""
    return np.tile(np.asarray(vector, dtype=np.float64), (height, 1))


def test_hand_derived_x2_enlargement():
    out = imresize(rows_of(UPSCALE_X2_INPUT, 3), 2)
    assert out.shape == (6, 8)
    for row in out:
        np.testing.assert_allclose(row, UPSCALE_X2_EXPECTED, atol=1e-12)
    # and along the other axis
    np.testing.assert_allclose(imresize(rows_of(UPSCALE_X2_INPUT, 3).T, 2)[:, 0], UPSCALE_X2_EXPECTED, atol=1e-12)


def test_hand_derived_half_reduction_with_antialiasing():
    out = imresize(rows_of(DOWNSCALE_X2_INPUT, 4), 0.5)
    assert out.shape == (2, 4)
    for row in out:
        np.testing.assert_allclose(row, DOWNSCALE_X2_EXPECTED, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.7, 2, 3])
def test_constant_image_stays_constant(scale):
    img = np.full((23, 17, 3), 137, dtype=np.uint8)
    out = imresize_uint8(img, scale)
    assert np.all(out == 137)


@pytest.mark.parametrize("shape,scale,expected", [
    ((7, 5), 1 / 2, (4, 3)), ((7, 5), 1 / 3, (3, 2)), ((10, 9), 1 / 4, (3, 3)), ((7, 5), 3, (21, 15)),
])
def test_output_shape_rounds_up(shape, scale, expected):
    assert imresize(np.zeros(shape), scale).shape == expected


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_enlargement_equals_torch_bicubic_upsample(scale):
    img = np.random.default_rng(scale).random((13, 11, 3)) * 255
    expected = imresize(img, scale)
    x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float()
    got = BicubicUpsample(scale)(x)[0].permute(1, 2, 0).double().numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float32 rounding on a 0..255 scale


def test_uint8_output_is_rounded_and_clipped():
    img = np.zeros((8, 8), dtype=np.uint8)
    img[:, 4:] = 255  # a step edge overshoots both ways with a = -0.5
    raw = imresize(img, 2)
    out = imresize_uint8(img, 2)
    assert raw.min() < 0 and raw.max() > 255
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.clip(np.round(raw), 0, 255))
