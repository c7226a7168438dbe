"""MATLAB-compatible ``imresize(..., 'bicubic')`` in NumPy (the SR evaluation protocol).

Cubic kernel with a = -0.5; when shrinking, the kernel is stretched by 1/scale (antialiasing);
out-of-range taps are mirrored with the edge pixel repeated, as MATLAB does. Used to make LR
images for evaluation and training; ``resize.BicubicUpsample`` is the torch twin for integer
upscaling inside a graph.
"""
from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len × taps) and 0-based source indices for one dimension."""
    kernel_width = 4.0
    antialias = scale < 1
    if antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if antialias else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, indices = _contributions(img.shape[axis], out_len, scale)
    moved = np.moveaxis(img, axis, 0)
    out = np.einsum("ot,ot...->o...", weights, moved[indices])
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Resizes an H×W or H×W×C float array. Give ``scale`` or ``output_shape`` (h, w).

    The dimension with the larger relative change is resized first, as in MATLAB. Returns
    float64; round and clip yourself where the protocol quantises (e.g. LR images to uint8).
    """
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    h, w = img.shape[:2]
    if output_shape is None:
        output_shape = (int(math.ceil(h * scale)), int(math.ceil(w * scale)))
        scales = (float(scale), float(scale))
    else:
        scales = (output_shape[0] / h, output_shape[1] / w)
    out = img.astype(np.float64)
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        out = _resize_axis(out, axis, output_shape[axis], scales[axis])
    return out


def imresize_uint8(img: np.ndarray, scale: float | None = None, output_shape=None) -> np.ndarray:
    """uint8 in, uint8 out (rounded), as MATLAB returns for uint8 images."""
    return np.clip(np.round(imresize(img.astype(np.float64), scale, output_shape)), 0, 255).astype(np.uint8)
