"""DASR's degradation vector: one per image, shared by all its tiles.

The encoder ends in a global average pool, so its output is the mean of a feature map over the
image. A huge image is not encoded at once (its activations would not fit): it is cut into a
grid of crops of at most ``DEGRADATION_MAX_PIXELS`` LR pixels (sides multiples of 4, the
encoder's stride) and the crops' vectors are averaged weighted by their feature-map area. That
is the whole-image pool except for the few feature pixels near crop seams, at bounded memory and
with no change of the degradation statistics (a downsampled image would look less blurred).
"""
from __future__ import annotations

import math

import torch

DEGRADATION_MAX_PIXELS = 1 << 20  # 1024×1024 LR pixels per encoder pass
ENCODER_STRIDE = 4


def _crop_bounds(length: int, pieces: int) -> list[tuple[int, int]]:
    units = math.ceil(length / ENCODER_STRIDE)
    bounds = [min(length, round(k * units / pieces) * ENCODER_STRIDE) for k in range(pieces + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def image_degradation(backend, x: torch.Tensor, scale: int,
                      max_pixels: int = DEGRADATION_MAX_PIXELS) -> torch.Tensor | None:
    """1×256 degradation vector of the image ``x`` (1×3×H×W), or None for non-blind models."""
    if not getattr(backend.model, "needs_degradation", False):
        return None
    h, w = x.shape[-2:]
    if h * w <= max_pixels:
        return backend.degradation(x, scale)
    side = max(ENCODER_STRIDE, math.isqrt(max_pixels) // ENCODER_STRIDE * ENCODER_STRIDE)
    acc, total = None, 0
    for top, bottom in _crop_bounds(h, math.ceil(h / side)):
        for left, right in _crop_bounds(w, math.ceil(w / side)):
            weight = math.ceil((bottom - top) / ENCODER_STRIDE) * math.ceil((right - left) / ENCODER_STRIDE)
            vector = backend.degradation(x[..., top:bottom, left:right], scale).float() * weight
            acc = vector if acc is None else acc + vector
            total += weight
    return acc / total
