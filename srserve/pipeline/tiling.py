"""Tiled inference geometry: plan the tiles, cut them out, stitch the results.

The API the pipeline and the server's cross-request batching share::

    cfg = default_tiling(model_or_backend, scale)   # TilingConfig: tile_size, margin, feather, align
    plan = plan_tiles(h, w, scale, cfg.tile_size, cfg.margin, feather=cfg.feather, align=cfg.align)
    batch = extract_tiles(image, plan, plan.tiles[i:j])   # N×C×th×tw, (th, tw) = plan.tile_shape
    out = backend.run(batch, scale, degradation)          # N×C×(s·th)×(s·tw)
    stitcher = Stitcher(plan)                             # preallocated 1×C×sH×sW
    stitcher.add(plan.tiles[i:j], out)                    # any order, any batch split
    sr = stitcher.result()                                # raises if a tile is missing

Geometry (all boxes in LR pixels of the *padded* image, see ``align``):

* ``tile_size`` is the side of the region a tile *owns* (its ``core``); the cores split the
  image evenly in a grid, each at most ``tile_size``. ``margin`` is the context every output
  pixel a tile contributes has (``feather`` widens what a tile contributes, see below). The
  ``window`` a tile runs on has the same shape for every tile of a plan:
  ``min(extent, tile_size + 2·(margin + feather))`` per axis.
* Tiles at the image border are **shifted inward instead of padded**: the window stays inside
  the image, so a border tile sees exactly the true border the whole-image run sees (zero
  padding inside each conv there) and gets the missing context from the interior side. Padding
  a tile would put content where the untiled run has zero padding and change its border pixels.
  Hence every plan's tiles share one shape, and every image at least as large as a window on
  both sides gives the same ``tile_shape``, so tiles of different images batch together
  (queue key: model, scale, ``plan.tile_shape``, precision). A smaller image is one tile of its
  own size along that axis; batch it only with tiles of equal shape.
* ``align`` (RRDBNet ×2/×1 pixel-unshuffle by 2/4): the image is reflect-padded at the bottom
  and right to a multiple of ``align`` (exactly what the network does itself on the whole
  image), and every core and window starts at a multiple of ``align``, so each tile's
  unshuffle phases equal the whole-image run's. The output is cropped back to s·H × s·W.
* ``feather == 0``: crop-stitch, each tile writes its core; with ``margin`` ≥ the receptive
  radius this equals the untiled output up to float rounding. ``feather > 0`` (``margin`` below
  the radius, e.g. RRDBNet): neighbouring tiles overlap by ``2·feather`` LR pixels around each
  core boundary and are cross-faded with linear ramps that sum to one, so the small residual
  error of a short margin has no step at the seams. The cross-fade zone gets its own context
  on top of the margin: a pixel next to a window edge is wrong by far more than its ramp weight
  can hide (measured), so every pixel with a non-zero weight keeps ``margin`` of context.

Tiles carry no pixels and no request state; the caller pairs them with its request (and its
DASR degradation vector: one per image, the same for all its tiles, see ``pipeline.degradation``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

# Tile-size defaults (LR pixels of the owned core): about 8 margins, bounded so that a window
# stays a few hundred pixels (memory) and the overlap overhead (window/core)² stays moderate.
MIN_DEFAULT_TILE = 128
MAX_DEFAULT_TILE = 512
TILE_QUANTUM = 16

# Margins up to this cover the theoretical receptive radius (crop-stitch, exact): every EDSR,
# MDSR, DASR and VDSR configuration, and reduced RRDBNets. Beyond it (RRDBNet's 23-block trunk:
# 348 LR px at x4) a margin that large would make every window mostly context.
MAX_EXACT_MARGIN = 128
# Beyond it the architecture's measured effective radius (``ArchSpec.effective_radius``) is used
# instead, with blending. See ``bench/receptive_field.py`` and README "Upscaling".


class Box(NamedTuple):
    """Half-open rectangle ``[top, bottom) × [left, right)`` in pixels."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def scaled(self, s: int) -> "Box":
        return Box(self.top * s, self.bottom * s, self.left * s, self.right * s)

    def shifted(self, dy: int, dx: int) -> "Box":
        return Box(self.top + dy, self.bottom + dy, self.left + dx, self.right + dx)


@dataclass(frozen=True)
class Tile:
    """One tile: ``window`` is what the network sees, ``core`` what the tile owns,
    ``region`` where its output is written (the core, widened by the feather on interior sides)."""

    index: int
    window: Box
    core: Box
    region: Box


@dataclass(frozen=True)
class TilePlan:
    height: int  # LR image size, before alignment padding
    width: int
    padded_height: int
    padded_width: int
    scale: int
    tile_size: int
    margin: int
    feather: int
    align: int
    tile_shape: tuple[int, int]  # window (h, w), the same for every tile
    tiles: tuple[Tile, ...]

    @property
    def out_height(self) -> int:
        return self.height * self.scale

    @property
    def out_width(self) -> int:
        return self.width * self.scale

    @property
    def out_tile_shape(self) -> tuple[int, int]:
        return self.tile_shape[0] * self.scale, self.tile_shape[1] * self.scale

    @property
    def blend(self) -> bool:
        return self.feather > 0

    def __len__(self) -> int:
        return len(self.tiles)


@dataclass(frozen=True)
class TilingConfig:
    """Per-model tiling defaults. ``exact_margin`` covers the theoretical receptive radius."""

    tile_size: int
    margin: int
    feather: int
    align: int
    exact_margin: int
    receptive_radius: float

    @property
    def mode(self) -> str:
        return "blend" if self.feather else "crop"


def ceil_to(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple)) * multiple


def floor_to(value: float, multiple: int) -> int:
    return int(value // multiple) * multiple


def _model_of(model_or_backend):
    return getattr(model_or_backend, "model", model_or_backend)


def tile_alignment(model_or_backend, scale: int) -> int:
    """Multiple every tile offset and size must have (``ArchSpec.tile_alignment``)."""
    model = _model_of(model_or_backend)
    return int(model.spec.tile_alignment(model.hparams(scale), int(scale)))


def default_tiling(model_or_backend, scale: int, *, exact: bool = False) -> TilingConfig:
    """Tile size, margin and stitching mode for a ``LoadedModel`` (or a backend holding one).

    Margin: the theoretical receptive radius (crop-stitch, exact) when it is at most
    ``MAX_EXACT_MARGIN``; otherwise the architecture's measured effective radius, blended with a
    feather of half the margin. ``exact=True`` always uses the theoretical radius and crop-stitch.
    """
    model = _model_of(model_or_backend)
    align = tile_alignment(model, scale)
    radius = float(model.receptive_radius(scale))
    exact_margin = ceil_to(radius, align)
    margin, feather = exact_margin, 0
    effective = model.spec.effective_radius(model.hparams(scale), int(scale))
    if not exact and effective is not None and exact_margin > MAX_EXACT_MARGIN:
        effective_margin = ceil_to(effective, align)
        if effective_margin < exact_margin:
            margin, feather = effective_margin, effective_margin // 2
    tile = min(MAX_DEFAULT_TILE, max(MIN_DEFAULT_TILE, ceil_to(8 * margin, TILE_QUANTUM)))
    return TilingConfig(tile_size=ceil_to(tile, align), margin=margin, feather=feather, align=align,
                        exact_margin=exact_margin, receptive_radius=radius)


def _split_axis(length: int, tile: int, align: int) -> list[tuple[int, int]]:
    """Even split of ``[0, length)`` into cores of at most ``tile``, boundaries on ``align``."""
    units = length // align
    n = max(1, math.ceil(length / tile))
    bounds = [round(k * units / n) * align for k in range(n + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _window_axis(core: tuple[int, int], length: int, window: int, align: int) -> tuple[int, int]:
    """Window of size ``window`` centred on the core (start on ``align``), kept inside the image."""
    c0, c1 = core
    start = c0 - floor_to((window - (c1 - c0)) / 2, align)
    start = min(max(start, 0), length - window)
    return start, start + window


def _region_axis(core: tuple[int, int], length: int, feather: int) -> tuple[int, int]:
    c0, c1 = core
    return (c0 - feather if c0 > 0 else 0), (c1 + feather if c1 < length else length)


def plan_tiles(height: int, width: int, scale: int, tile_size: int, margin: int, *, feather: int = 0,
               align: int = 1) -> TilePlan:
    """Plans the tiles of an ``height × width`` LR image (see the module docstring).

    ``tile_size <= 0`` means one tile covering the whole image. ``margin`` and ``tile_size`` are
    rounded up to ``align``; ``feather`` is clipped to half the smallest core.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image {height}×{width}")
    align = max(1, int(align))
    ph, pw = ceil_to(height, align), ceil_to(width, align)
    if tile_size <= 0:
        tile_size = max(ph, pw)
    tile_size = ceil_to(max(int(tile_size), 1), align)
    margin = ceil_to(max(int(margin), 0), align)
    rows, cols = _split_axis(ph, tile_size, align), _split_axis(pw, tile_size, align)
    smallest_core = min(b - a for a, b in rows + cols)
    feather = max(0, min(int(feather), smallest_core // 2))
    context = margin + ceil_to(feather, align)
    th, tw = min(ph, tile_size + 2 * context), min(pw, tile_size + 2 * context)
    tiles = []
    for row in rows:
        wy, ry = _window_axis(row, ph, th, align), _region_axis(row, ph, feather)
        for col in cols:
            wx, rx = _window_axis(col, pw, tw, align), _region_axis(col, pw, feather)
            tile = Tile(len(tiles), Box(*wy, *wx), Box(*row, *col), Box(*ry, *rx))
            _check_context(tile, ph, pw, context)
            tiles.append(tile)
    return TilePlan(height, width, ph, pw, int(scale), tile_size, margin, feather, align, (th, tw), tuple(tiles))


def _check_context(tile: Tile, ph: int, pw: int, context: int) -> None:
    w, c = tile.window, tile.core
    ok = (w.top <= max(0, c.top - context) and w.bottom >= min(ph, c.bottom + context)
          and w.left <= max(0, c.left - context) and w.right >= min(pw, c.right + context))
    if not ok:  # a planning bug, never user input
        raise AssertionError(f"tile {tile} lacks its {context}px context")


def _reflect_indices(start: int, end: int, length: int) -> torch.Tensor:
    """Indices ``start..end-1`` with those ≥ ``length`` mirrored as ``F.pad(mode='reflect')``;
    mirrored again where the pad is longer than the image (a 1- or 2-pixel side, on which the
    network's own reflect padding would fail)."""
    idx = torch.arange(start, end)
    if length == 1:
        return torch.zeros_like(idx)
    period = 2 * (length - 1)
    idx = idx % period
    return torch.where(idx >= length, period - idx, idx)


def extract_tile(image: torch.Tensor, window: Box) -> torch.Tensor:
    """C×h×w window of a 1×C×H×W (or C×H×W) image; rows/columns past the image (alignment
    padding only) are reflected, as the network pads the whole image."""
    img = image[0] if image.dim() == 4 else image
    h, w = img.shape[-2:]
    if window.bottom <= h and window.right <= w:
        return img[:, window.top:window.bottom, window.left:window.right]
    rows = _reflect_indices(window.top, window.bottom, h).to(img.device)
    cols = _reflect_indices(window.left, window.right, w).to(img.device)
    return img.index_select(1, rows).index_select(2, cols)


def extract_tiles(image: torch.Tensor, plan: TilePlan, tiles: Sequence[Tile] | None = None) -> torch.Tensor:
    """N×C×th×tw batch of the windows of ``tiles`` (all tiles of ``plan`` by default)."""
    tiles = plan.tiles if tiles is None else tiles
    return torch.stack([extract_tile(image, t.window) for t in tiles])


def _ramp(length_hr: int, region: tuple[int, int], core: tuple[int, int], extent: int, scale: int,
          feather: int) -> torch.Tensor:
    """1-D blend weights over a tile's output region: linear ramps across each interior core
    boundary, ``(i + 0.5) / (2·s·feather)``, so the two tiles meeting there sum to one."""
    weights = torch.ones(length_hr)
    r0 = region[0]
    width = 2 * scale * feather
    steps = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    if core[0] > 0:  # fade in across the boundary at core[0]
        start = (core[0] - feather - r0) * scale
        weights[start:start + width] *= steps
    if core[1] < extent:  # fade out across the boundary at core[1]
        start = (core[1] - feather - r0) * scale
        weights[start:start + width] *= 1 - steps
    return weights


class Stitcher:
    """Accumulates tile outputs into one preallocated 1×C×sH×sW float32 image."""

    def __init__(self, plan: TilePlan, channels: int = 3, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.plan = plan
        self.output = torch.zeros(1, channels, plan.out_height, plan.out_width, device=device, dtype=dtype)
        self._done: set[int] = set()

    @property
    def missing(self) -> int:
        return len(self.plan.tiles) - len(self._done)

    def add(self, tiles: Sequence[Tile] | Tile, outputs: torch.Tensor) -> None:
        """Adds N tile outputs (N×C×(s·th)×(s·tw), or C×.. for a single tile)."""
        if isinstance(tiles, Tile):
            tiles, outputs = [tiles], outputs.unsqueeze(0) if outputs.dim() == 3 else outputs
        expected = (self.output.shape[1], *self.plan.out_tile_shape)
        if tuple(outputs.shape[1:]) != expected or outputs.shape[0] != len(tiles):
            raise ValueError(f"tile outputs {tuple(outputs.shape)} do not match {len(tiles)} tiles of {expected}")
        for tile, out in zip(tiles, outputs):
            if tile.index in self._done:
                raise ValueError(f"tile {tile.index} added twice")
            self._add_one(tile, out.to(self.output.device, self.output.dtype))
            self._done.add(tile.index)

    def _add_one(self, tile: Tile, out: torch.Tensor) -> None:
        plan, s = self.plan, self.plan.scale
        region = tile.region.scaled(s)
        # clip to the unpadded output (alignment padding is computed, then dropped)
        dst = Box(region.top, min(region.bottom, plan.out_height), region.left, min(region.right, plan.out_width))
        src = dst.shifted(-tile.window.top * s, -tile.window.left * s)
        piece = out[:, src.top:src.bottom, src.left:src.right]
        target = self.output[0, :, dst.top:dst.bottom, dst.left:dst.right]
        if not plan.blend:
            target.copy_(piece)
            return
        wy = _ramp(region.height, (tile.region.top, tile.region.bottom), (tile.core.top, tile.core.bottom),
                   plan.padded_height, s, plan.feather)[: dst.height].to(target.device, target.dtype)
        wx = _ramp(region.width, (tile.region.left, tile.region.right), (tile.core.left, tile.core.right),
                   plan.padded_width, s, plan.feather)[: dst.width].to(target.device, target.dtype)
        target.add_(piece * wy[:, None] * wx[None, :])

    def result(self) -> torch.Tensor:
        """The stitched 1×C×sH×sW image; refuses to return a partial one."""
        if self.missing:
            raise RuntimeError(f"{self.missing} of {len(self.plan.tiles)} tiles were never added")
        return self.output
