"""Geometric self-ensemble ×8: run the 8 flips/transposes of an input, undo each, average.

The transforms act on the last two axes only, so they apply to a whole image or to a batch of
tile windows alike; with tiling, each tile's window is ensembled before stitching, which equals
the ensemble of the whole image wherever a single tile equals the whole image (crop-stitch
with ``margin`` ≥ the receptive radius), because every transform maps the window onto the
same pixels of the transformed image.
"""
from __future__ import annotations

from typing import Callable

import torch

# (transpose, flip H, flip W) for the 8 elements of the dihedral group D4
Transform = tuple[bool, bool, bool]
ENSEMBLE_TRANSFORMS: list[Transform] = [(t, fh, fw) for t in (False, True) for fh in (False, True)
                                        for fw in (False, True)]
IDENTITY: list[Transform] = [(False, False, False)]


def apply_transform(x: torch.Tensor, transform: Transform) -> torch.Tensor:
    t, fh, fw = transform
    if t:
        x = x.transpose(-2, -1)
    if fh:
        x = x.flip(-2)
    if fw:
        x = x.flip(-1)
    return x


def invert_transform(x: torch.Tensor, transform: Transform) -> torch.Tensor:
    t, fh, fw = transform
    if fw:
        x = x.flip(-1)
    if fh:
        x = x.flip(-2)
    if t:
        x = x.transpose(-2, -1)
    return x


def transforms_for(self_ensemble: bool) -> list[Transform]:
    return ENSEMBLE_TRANSFORMS if self_ensemble else IDENTITY


def ensemble_mean(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the un-transformed outputs, summed in transform order: the one place the ensemble
    is averaged, so a tile gives the same bits whichever path (CLI loop, server) ran it."""
    acc = outputs[0]
    for y in outputs[1:]:
        acc = acc + y  # not in place: backends may return inference tensors
    return acc if len(outputs) == 1 else acc / len(outputs)


def run_ensemble(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 transforms: list[Transform] = ENSEMBLE_TRANSFORMS) -> torch.Tensor:
    """Mean over ``transforms`` of ``invert(run(apply(x)))``; ``run`` maps a batch to a batch."""
    return ensemble_mean([invert_transform(run(apply_transform(x, t)), t) for t in transforms])
