"""The inference pipeline shared by the CLI, the export checks and the server.

Minimal first version: whole-image inference with optional geometric self-ensemble.
Tiling, image I/O and any-scale output arrive with the pipeline issue; the signature of
``upscale_tensor`` is stable.
"""
from __future__ import annotations

import torch

from srserve.backend import Backend

# (transpose, flip H, flip W) for the 8 elements of the dihedral group D4
ENSEMBLE_TRANSFORMS = [(t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True)]


def apply_transform(x: torch.Tensor, transform: tuple[bool, bool, bool]) -> torch.Tensor:
    t, fh, fw = transform
    if t:
        x = x.transpose(-2, -1)
    if fh:
        x = x.flip(-2)
    if fw:
        x = x.flip(-1)
    return x


def invert_transform(x: torch.Tensor, transform: tuple[bool, bool, bool]) -> torch.Tensor:
    t, fh, fw = transform
    if fw:
        x = x.flip(-1)
    if fh:
        x = x.flip(-2)
    if t:
        x = x.transpose(-2, -1)
    return x


def upscale_tensor(backend: Backend, x: torch.Tensor, scale: int, *, self_ensemble: bool = False,
                   tile: int = 0) -> torch.Tensor:
    """1×3×H×W RGB in [0, 1] -> 1×3×sH×sW in [0, 1] (clamped, not quantised)."""
    degradation = backend.degradation(x, scale)
    if not self_ensemble:
        return backend.run(x, scale, degradation).clamp(0, 1)
    acc = None
    for transform in ENSEMBLE_TRANSFORMS:
        y = invert_transform(backend.run(apply_transform(x, transform), scale, degradation), transform)
        acc = y if acc is None else acc + y
    return (acc / len(ENSEMBLE_TRANSFORMS)).clamp(0, 1)
