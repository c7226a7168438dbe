"""One image's way through a model, shared by the CLI and the server.

    raster (decoded)  ->  ImageJob: model inputs (colour; alpha as R = G = B unless opaque or
    bicubic; gray as R = G = B), ONE tile plan for all of them, DASR's vector per plane
    ->  WorkItems (tile × ensemble transform)  ->  Plane.add: un-transform, ensemble mean, stitch
    ->  ImageJob.compose: luma for gray, alpha, exact output size  ->  encode (``imageio``)

Who runs the work items is the only difference between the paths: ``run_job`` runs them in a
plain loop (batches of ``batch_size`` tiles, out-of-memory retry); the server's scheduler runs
the items of many jobs together in shared batches. Both feed the outputs back through
``Plane.add``, so a served image equals the CLI's up to float rounding of batch sizes.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from srserve.models.errors import SRError
from srserve.models.resize import BicubicUpsample

from .degradation import DEGRADATION_MAX_PIXELS, image_degradation
from .ensemble import Transform, apply_transform, ensemble_mean, invert_transform, transforms_for
from .imageio import Raster
from .memory import auto_tile_size, available_memory, bytes_per_lr_pixel, is_out_of_memory
from .tiling import Stitcher, Tile, TilePlan, default_tiling, extract_tile, plan_tiles

log = logging.getLogger("srserve.pipeline")

MIN_TILE = 16  # below this a retry is pointless: the margins dominate every window
LUMA = (0.299, 0.587, 0.114)
ALPHA_MODES = ("model", "bicubic")
Progress = Callable[[int, int], None]


class OutOfMemory(SRError):
    """Even the smallest tile does not fit in memory."""


# --- tensors <-> pixels -----------------------------------------------------------------------
def to_tensor(pixels: np.ndarray, max_value: int) -> torch.Tensor:
    """H×W×C integer pixels -> 1×3×H×W float in [0, 1] (a single channel replicated)."""
    x = torch.from_numpy(pixels.astype(np.float32) / max_value).permute(2, 0, 1)[None]
    return x.expand(1, 3, *x.shape[-2:]).contiguous() if x.shape[1] == 1 else x


def quantise(x: torch.Tensor, max_value: int, dtype) -> np.ndarray:
    """1×C×H×W [0, 1] -> H×W×C integers, rounded (not truncated)."""
    return np.rint(x[0].clamp(0, 1).mul(max_value).permute(1, 2, 0).numpy()).astype(dtype)


def luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def resize_exact(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1×C×H×W float -> 1×C×height×width with Pillow's antialiased LANCZOS, per channel."""
    from PIL import Image

    if tuple(x.shape[-2:]) == (height, width):
        return x
    channels = [Image.fromarray(c.numpy().astype(np.float32), "F").resize((width, height), Image.Resampling.LANCZOS)
                for c in x[0]]
    return torch.from_numpy(np.stack([np.asarray(c) for c in channels]))[None]


# --- the tile plan ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TilingRequest:
    """How to tile: ``tile`` 0 = whole image, None = the fewest tiles memory allows (the whole
    image when it fits), N = cores of N LR pixels (uniform windows, e.g. to batch across
    requests). ``margin``/``feather`` default per architecture; ``exact`` = untiled output."""

    tile: int | None = None
    margin: int | None = None
    feather: int | None = None
    exact: bool = False
    batch_size: int = 1


def plan_for(backend, height: int, width: int, scale: int, tiling: TilingRequest = TilingRequest()) -> TilePlan:
    """The one place a tile plan is decided (CLI, evaluation and server)."""
    cfg = default_tiling(backend, scale, exact=tiling.exact)
    margin = cfg.margin if tiling.margin is None else int(tiling.margin)
    feather = tiling.feather
    if tiling.exact:
        margin, feather = max(margin, cfg.exact_margin), 0
    elif feather is None:
        feather = 0 if margin >= cfg.exact_margin else margin // 2
    tile = tiling.tile
    if tile is None:
        whole = height * width * bytes_per_lr_pixel(backend, scale)
        budget = available_memory(getattr(backend, "device", "cpu"))
        tile = 0 if whole <= budget else auto_tile_size(backend, scale, margin, batch=tiling.batch_size,
                                                        budget=budget, minimum=MIN_TILE)
    return plan_tiles(height, width, scale, int(tile), margin, feather=feather, align=cfg.align)


def smaller_plan(plan: TilePlan, exc: BaseException) -> TilePlan:
    """The same plan with half the tile side (out-of-memory retry); gives up below ``MIN_TILE``."""
    current = min(plan.tile_size, max(plan.padded_height, plan.padded_width))
    tile = current // 2
    if tile < MIN_TILE:
        raise OutOfMemory(f"out of memory even with {current}px tiles and {plan.margin}px margins "
                          f"({type(exc).__name__}); free memory or use a smaller model") from None
    log.warning("out of memory with %dpx tiles; retrying the image with %dpx tiles", current, tile)
    return plan_tiles(plan.height, plan.width, plan.scale, tile, plan.margin, feather=plan.feather, align=plan.align)


# --- work items and planes --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class WorkItem:
    """One window to run: a tile of a plane under one ensemble transform."""

    plane: "Plane"
    tile: Tile
    transform: int  # index into plane.transforms

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.plane.plan.tile_shape
        return (w, h) if self.plane.transforms[self.transform][0] else (h, w)

    def window(self) -> torch.Tensor:
        """C×h×w input of this item (cut out when its batch forms, not before)."""
        return apply_transform(extract_tile(self.plane.x, self.tile.window), self.plane.transforms[self.transform])


class Plane:
    """One 1×3×H×W model input of a job (the colour, or the alpha as R = G = B), its tile plan,
    its DASR degradation vector and its output, assembled as tile outputs arrive (in any order).
    ``add`` is called by one thread at a time (the CLI loop, or the server's collector)."""

    def __init__(self, x: torch.Tensor, plan: TilePlan, transforms: list[Transform],
                 degradation: torch.Tensor | None = None):
        self.x = x
        self.plan = plan
        self.scale = plan.scale
        self.transforms = transforms
        self.degradation = degradation
        self._stitcher: Stitcher | None = None  # allocated with the first output (off the event loop)
        self._whole: torch.Tensor | None = None  # a one-tile plan: the output as is, no stitching copy
        self._slots: dict[int, list[torch.Tensor | None]] = {}
        self.remaining = len(plan.tiles) * len(transforms)

    @property
    def total(self) -> int:
        return len(self.plan.tiles) * len(self.transforms)

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def items(self) -> list[WorkItem]:
        return [WorkItem(self, tile, t) for tile in self.plan.tiles for t in range(len(self.transforms))]

    def batches(self, batch_size: int) -> Iterator[list[WorkItem]]:
        """Items in batches of one window shape: ``batch_size`` tiles under each transform in turn,
        so each tile's ensemble completes before the next tiles start (bounded memory)."""
        tiles = self.plan.tiles
        for start in range(0, len(tiles), max(1, batch_size)):
            chunk = tiles[start:start + batch_size]
            for t in range(len(self.transforms)):
                yield [WorkItem(self, tile, t) for tile in chunk]

    def add(self, item: WorkItem, out: torch.Tensor) -> None:
        """One C×sh×sw output: un-transformed, averaged over the ensemble, stitched."""
        out = invert_transform(out, self.transforms[item.transform])
        if len(self.transforms) > 1:
            slots = self._slots.setdefault(item.tile.index, [None] * len(self.transforms))
            slots[item.transform] = out
            if any(s is None for s in slots):
                self.remaining -= 1
                return
            out = ensemble_mean(slots)
            del self._slots[item.tile.index]
        if len(self.plan.tiles) == 1:
            self._whole = out[None, :, :self.plan.out_height, :self.plan.out_width]
        else:
            if self._stitcher is None:
                self._stitcher = Stitcher(self.plan, channels=self.x.shape[1])
            self._stitcher.add(item.tile, out)
        self.remaining -= 1

    def result(self) -> torch.Tensor:
        """1×C×sH×sW in [0, 1]; refuses a partial image."""
        if self.remaining:
            raise RuntimeError(f"{self.remaining} of {self.total} tile outputs are missing")
        out = self._whole if self._whole is not None else self._stitcher.result()
        return out.clamp(0, 1) if out.is_inference() else out.clamp_(0, 1)


def make_plane(x: torch.Tensor, plan: TilePlan, self_ensemble: bool) -> Plane:
    return Plane(x.float().cpu(), plan, transforms_for(self_ensemble))


# --- whole images -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputSize:
    """Native scale to run and the exact output size (height, width) after resizing."""

    scale: int
    height: int
    width: int


class ImageJob:
    """A decoded image through one model at ``size``: its planes, progress and final raster."""

    def __init__(self, raster: Raster, size: OutputSize, planes: list[Plane], alpha: str):
        self.raster = raster
        self.size = size
        self.planes = planes
        self.alpha = alpha
        self._lock = threading.Lock()
        self.tiles_done = 0

    @property
    def plan(self) -> TilePlan:
        return self.planes[0].plan

    @property
    def scale(self) -> int:
        return self.planes[0].scale

    @property
    def tiles_total(self) -> int:
        return sum(p.total for p in self.planes)

    @property
    def done(self) -> bool:
        return all(p.done for p in self.planes)

    def items(self) -> list[WorkItem]:
        return [item for plane in self.planes for item in plane.items()]

    def add(self, item: WorkItem, out: torch.Tensor) -> None:
        item.plane.add(item, out)
        with self._lock:
            self.tiles_done += 1

    def replan(self, plan: TilePlan) -> None:
        """Starts over with another plan (out-of-memory retry); degradation vectors are kept."""
        self.planes = [Plane(p.x, plan, p.transforms, p.degradation) for p in self.planes]
        self.tiles_done = 0

    def compose(self) -> Raster:
        """The output raster: bit depth, gray/colour, alpha and ICC profile of the input kept."""
        raster, size = self.raster, self.size
        color = self.planes[0].result()
        if raster.gray:
            color = luma(color)
        parts = [resize_exact(color, size.height, size.width)]
        if raster.has_alpha:
            parts.append(resize_exact(self._alpha_output(), size.height, size.width))
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return Raster(quantise(out, raster.max_value, raster.pixels.dtype), raster.icc_profile, raster.source_format)

    def _alpha_output(self) -> torch.Tensor:
        raster, s = self.raster, self.size.scale
        if len(self.planes) > 1:
            return self.planes[1].result().mean(1, keepdim=True)
        if raster.alpha.min() == raster.max_value:  # fully opaque: nothing was computed
            return torch.ones(1, 1, raster.height * s, raster.width * s)
        a = to_tensor(raster.alpha, raster.max_value)[:, :1]
        with torch.inference_mode():
            return BicubicUpsample(s)(a).clamp(0, 1).clone()


def model_inputs(raster: Raster, alpha: str = "model") -> list[torch.Tensor]:
    """The 1×3×H×W inputs an image needs: its colour, and its alpha when it goes through the model."""
    if alpha not in ALPHA_MODES:
        raise SRError(f"alpha mode must be one of {ALPHA_MODES}, got {alpha!r}")
    inputs = [to_tensor(raster.color, raster.max_value)]
    if raster.has_alpha and alpha == "model" and raster.alpha.min() != raster.max_value:
        inputs.append(to_tensor(raster.alpha, raster.max_value))
    return inputs


def create_job(backend, raster: Raster, size: OutputSize, *, self_ensemble: bool = False, alpha: str = "model",
               tiling: TilingRequest = TilingRequest()) -> ImageJob:
    """An image job with one tile plan for all its planes (degradation vectors not yet set)."""
    plan = plan_for(backend, raster.height, raster.width, size.scale, tiling)
    planes = [make_plane(x, plan, self_ensemble) for x in model_inputs(raster, alpha)]
    return ImageJob(raster, size, planes, alpha)


# --- out of memory ----------------------------------------------------------------------------
def free_cached_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class BatchSplitter:
    """The one out-of-memory policy for a batch (CLI loop and server scheduler): halve it until
    it fits, remember the largest size that fitted so later batches start there; a single
    window that does not fit raises ``OutOfMemory`` (the CLI then re-plans with smaller tiles)."""

    def __init__(self, device="cpu", label: str = ""):
        self.device = device
        self.label = label
        self.limit: int | None = None

    def run(self, run: Callable[[list], list], items: list) -> list:
        size = min(len(items), self.limit or len(items))
        outputs = []
        for start in range(0, len(items), size):
            outputs += self._split(run, items[start:start + size])
        return outputs

    def _split(self, run: Callable[[list], list], items: list) -> list:
        if self.limit is not None and len(items) > self.limit:  # known not to fit: split without trying
            half = len(items) // 2
            return self._split(run, items[:half]) + self._split(run, items[half:])
        try:
            return run(items)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            free_cached_memory(self.device)
            if len(items) == 1:
                raise OutOfMemory(f"out of memory running one {'×'.join(map(str, items[0].shape))} window"
                                  f"{' of ' + self.label if self.label else ''}") from None
            half = len(items) // 2
            self.limit = half if self.limit is None else min(self.limit, half)
            log.warning("out of memory with %d tiles%s per batch; splitting to %d", len(items),
                        f" of {self.label}" if self.label else "", half)
            return self._split(run, items[:half]) + self._split(run, items[half:])


# --- running a job in a plain loop (the CLI, evaluation) --------------------------------------
def _free_cached_memory(backend) -> None:
    free_cached_memory(getattr(backend, "device", "cpu"))


def run_items(backend, items: list[WorkItem]) -> list[torch.Tensor]:
    """One backend call for items of one plane and window shape -> their C×sh×sw outputs (CPU)."""
    plane = items[0].plane
    windows = torch.stack([item.window() for item in items])
    deg = None if plane.degradation is None else plane.degradation.expand(len(items), -1)
    return list(backend.run(windows, plane.scale, deg).float().cpu())


def set_degradation(backend, plane: Plane, max_pixels: int = DEGRADATION_MAX_PIXELS) -> None:
    """DASR: the plane's degradation vector from the whole image (halving the crop on OOM)."""
    while plane.degradation is None and getattr(backend.model, "needs_degradation", False):
        try:
            plane.degradation = image_degradation(backend, plane.x, plane.scale, max_pixels).float().cpu()
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(exc) or max_pixels <= 64 * 64:
                raise
            _free_cached_memory(backend)
            max_pixels //= 4


def run_job(backend, job: ImageJob, *, batch_size: int = 1, progress: Progress | None = None) -> ImageJob:
    """Runs every work item of ``job`` in order. Out of memory splits the batch
    (``BatchSplitter``); a single window that does not fit starts the image again with half the
    tile side (``smaller_plan``): never a partial image."""
    for plane in job.planes:
        set_degradation(backend, plane)
    splitter = BatchSplitter(getattr(backend, "device", "cpu"))
    while True:
        try:
            for plane in job.planes:
                for items in plane.batches(batch_size):
                    for item, out in zip(items, splitter.run(lambda chunk: run_items(backend, chunk), items)):
                        job.add(item, out)
                    if progress is not None:
                        progress(job.tiles_done, job.tiles_total)
            return job
        except OutOfMemory as exc:
            job.replan(smaller_plan(job.plan, exc))
