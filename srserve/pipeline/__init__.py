"""The inference pipeline shared by the CLI, the evaluation, the export checks and the server.

``upscale_tensor`` runs one image through a ``Backend``: the DASR degradation once per image,
then tiles (``tiling``) in batches with optional self-ensemble (``ensemble``), stitched into a
preallocated output. Out of memory (CUDA OOM, a failed CPU allocation) halves the tile batch,
then the tile, and starts the image again; it never returns a partial image. Image files:
``imageio``; whole-image jobs with alpha, grayscale and any output scale: ``image``.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from srserve.backend import Backend
from srserve.models.errors import SRError

from .degradation import DEGRADATION_MAX_PIXELS, image_degradation
from .ensemble import ENSEMBLE_TRANSFORMS, apply_transform, invert_transform, run_ensemble, transforms_for
from .memory import auto_tile_size, bytes_per_lr_pixel, available_memory, is_out_of_memory
from .tiling import Stitcher, TilePlan, default_tiling, extract_tiles, plan_tiles

__all__ = [
    "ENSEMBLE_TRANSFORMS", "OutOfMemory", "apply_transform", "invert_transform", "resolve_tiling", "run_plan",
    "upscale_tensor",
]

log = logging.getLogger("srserve.pipeline")

MIN_TILE = 16  # below this a retry is pointless: the margins dominate every window
Progress = Callable[[int, int], None]


class OutOfMemory(SRError):
    """Even the smallest tile does not fit in memory."""


def _free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_plan(backend: Backend, x: torch.Tensor, plan: TilePlan, degradation: torch.Tensor | None, *,
             self_ensemble: bool = False, batch_size: int = 1, progress: Progress | None = None) -> torch.Tensor:
    """Runs every tile of ``plan`` (``batch_size`` windows per backend call) and stitches them."""
    transforms = transforms_for(self_ensemble)

    def run(windows: torch.Tensor) -> torch.Tensor:
        deg = None if degradation is None else degradation.expand(windows.shape[0], -1)
        return run_ensemble(lambda w: backend.run(w, plan.scale, deg).float().cpu(), windows, transforms)

    tiles = plan.tiles
    if len(tiles) == 1:  # the whole image: no stitching copy (it would double the output memory)
        out = run(extract_tiles(x, plan))
        if progress is not None:
            progress(1, 1)
        return out[..., :plan.out_height, :plan.out_width]
    stitcher = Stitcher(plan, channels=x.shape[1])
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start:start + batch_size]
        stitcher.add(batch, run(extract_tiles(x, plan, batch)))
        if progress is not None:
            progress(min(start + batch_size, len(tiles)), len(tiles))
    return stitcher.result()


def resolve_tiling(backend: Backend, x: torch.Tensor, scale: int, *, tile: int | None, margin: int | None,
                   feather: int | None, exact: bool, batch_size: int = 1) -> TilePlan:
    """The plan ``upscale_tensor`` runs: ``tile`` 0 = whole image, None = as large as memory allows."""
    height, width = x.shape[-2:]
    cfg = default_tiling(backend, scale, exact=exact)
    margin = cfg.margin if margin is None else int(margin)
    if exact:
        margin, feather = max(margin, cfg.exact_margin), 0
    elif feather is None:
        feather = 0 if margin >= cfg.exact_margin else margin // 2
    if tile is None:
        whole = height * width * bytes_per_lr_pixel(backend, scale)
        budget = available_memory(getattr(backend, "device", "cpu"))
        tile = 0 if whole <= budget else auto_tile_size(backend, scale, margin, batch=batch_size, budget=budget,
                                                        minimum=MIN_TILE)
    return plan_tiles(height, width, scale, int(tile), margin, feather=feather, align=cfg.align)


def upscale_tensor(backend: Backend, x: torch.Tensor, scale: int, *, self_ensemble: bool = False,
                   tile: int | None = 0, margin: int | None = None, feather: int | None = None, exact: bool = False,
                   batch_size: int = 1, progress: Progress | None = None,
                   degradation: torch.Tensor | None = None,
                   degradation_max_pixels: int = DEGRADATION_MAX_PIXELS) -> torch.Tensor:
    """1×3×H×W RGB in [0, 1] -> 1×3×sH×sW in [0, 1] (clamped, not quantised).

    ``tile``: core side in LR pixels; 0 = the whole image at once; None = automatic (the whole
    image if it fits the memory estimate, else the largest tile that does). ``margin`` (context
    per side) and ``feather`` (blend width) default per architecture (``tiling.default_tiling``);
    ``exact`` forces margin ≥ receptive radius with crop-stitch (= untiled up to float rounding).
    ``degradation`` (DASR): computed once from the whole image when not given.
    """
    scale = int(scale)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"upscale_tensor takes one image 1×C×H×W, got {tuple(x.shape)}")
    x = x.float().cpu()
    if degradation is None:
        degradation = _degradation_with_retry(backend, x, scale, degradation_max_pixels)
    plan = resolve_tiling(backend, x, scale, tile=tile, margin=margin, feather=feather, exact=exact,
                          batch_size=batch_size)
    while True:
        try:
            out = run_plan(backend, x, plan, degradation, self_ensemble=self_ensemble, batch_size=batch_size,
                           progress=progress)
            return out.clamp(0, 1) if out.is_inference() else out.clamp_(0, 1)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            _free_cached_memory(torch.device(getattr(backend, "device", "cpu")))
            plan, batch_size = _smaller(plan, batch_size, exc)


def _smaller(plan: TilePlan, batch_size: int, exc: BaseException) -> tuple[TilePlan, int]:
    """Halves the batch first (cheaper), then the tile; gives up below ``MIN_TILE``."""
    if min(batch_size, len(plan)) > 1:
        log.warning("out of memory with %d tiles per batch; retrying with %d", batch_size, batch_size // 2)
        return plan, batch_size // 2
    current = min(plan.tile_size, max(plan.padded_height, plan.padded_width))
    tile = current // 2
    if tile < MIN_TILE:
        raise OutOfMemory(f"out of memory even with {current}px tiles and {plan.margin}px margins "
                          f"({type(exc).__name__}); free memory or use a smaller model") from None
    log.warning("out of memory with %dpx tiles; retrying the image with %dpx tiles", current, tile)
    smaller = plan_tiles(plan.height, plan.width, plan.scale, tile, plan.margin, feather=plan.feather, align=plan.align)
    return smaller, 1


def _degradation_with_retry(backend: Backend, x: torch.Tensor, scale: int, max_pixels: int) -> torch.Tensor | None:
    while True:
        try:
            return image_degradation(backend, x, scale, max_pixels)
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc) or max_pixels <= 64 * 64:
                raise
            _free_cached_memory(torch.device(getattr(backend, "device", "cpu")))
            max_pixels //= 4
