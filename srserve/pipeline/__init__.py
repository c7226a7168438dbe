"""The inference pipeline shared by the CLI, the evaluation, the export checks and the server.

An image becomes an ``ImageJob`` (``job``): its model inputs, one tile plan (``tiling``), work
items (tile × self-ensemble transform, ``ensemble``) whose outputs are averaged and stitched into
a preallocated output. ``run_job`` runs the items in a plain loop; the server's scheduler runs
the items of many jobs together. Out of memory (CUDA OOM, a failed CPU allocation) halves the
tile batch, then the tile, and starts the image again; it never returns a partial image. Image
files: ``imageio``; output sizes, alpha and grayscale: ``image``.
"""
from __future__ import annotations

import torch

from srserve.backends import Backend

from .degradation import DEGRADATION_MAX_PIXELS
from .ensemble import ENSEMBLE_TRANSFORMS, apply_transform, invert_transform
from .job import (ImageJob, OutOfMemory, Plane, TilingRequest, WorkItem, create_job, make_plane, plan_for, run_job,
                  set_degradation)

__all__ = [
    "ENSEMBLE_TRANSFORMS", "ImageJob", "OutOfMemory", "Plane", "TilingRequest", "WorkItem", "apply_transform",
    "create_job", "invert_transform", "plan_for", "run_job", "upscale_tensor",
]


def upscale_tensor(backend: Backend, x: torch.Tensor, scale: int, *, self_ensemble: bool = False,
                   tile: int | None = 0, margin: int | None = None, feather: int | None = None, exact: bool = False,
                   batch_size: int = 1, progress=None, degradation: torch.Tensor | None = None,
                   degradation_max_pixels: int = DEGRADATION_MAX_PIXELS) -> torch.Tensor:
    """1×3×H×W RGB in [0, 1] -> 1×3×sH×sW in [0, 1] (clamped, not quantised).

    ``tile``: core side in LR pixels; 0 = the whole image at once; None = automatic (the whole
    image if it fits the memory estimate, else the largest tile that does). ``margin`` (context
    per side) and ``feather`` (blend width) default per architecture (``tiling.default_tiling``);
    ``exact`` forces margin ≥ receptive radius with crop-stitch (= untiled up to float rounding).
    ``degradation`` (DASR): computed once from the whole image when not given.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"upscale_tensor takes one image 1×C×H×W, got {tuple(x.shape)}")
    tiling = TilingRequest(tile=tile, margin=margin, feather=feather, exact=exact, batch_size=batch_size)
    plan = plan_for(backend, x.shape[-2], x.shape[-1], int(scale), tiling)
    plane = make_plane(x, plan, self_ensemble)
    plane.degradation = None if degradation is None else degradation.float().cpu()
    set_degradation(backend, plane, degradation_max_pixels)
    job = ImageJob(raster=None, size=None, planes=[plane], alpha="model")
    run_job(backend, job, batch_size=batch_size, progress=progress)
    return job.planes[0].result()  # not ``plane``: an out-of-memory retry replaces the planes
