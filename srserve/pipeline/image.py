"""Whole-image jobs: colour, grayscale and alpha through the model, any output size.

* Grayscale in, grayscale out: the gray channel is fed as R = G = B and the result reduced to
  BT.601 luma (the weights Pillow uses for RGB -> L).
* Alpha: by default through the model too (as R = G = B, mean of the result), so edges stay as
  sharp as the colour; ``alpha="bicubic"`` uses MATLAB-exact bicubic instead (cheaper). A fully
  opaque alpha is not run at all.
* Any output size (``--outscale``, ``--width``/``--height``): the smallest native scale ≥ the
  request runs (MDSR picks that head), then Pillow's antialiased LANCZOS filter, applied to the
  float result per channel, shrinks it to the exact size. LANCZOS in C is fast and has no
  memory blow-up on big images; the MATLAB ``imresize`` of ``srserve.models`` (the evaluation
  protocol's resize) materialises taps × pixels in float64 and is kept for evaluation only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from srserve.models.errors import SRError
from srserve.models.resize import BicubicUpsample

from . import upscale_tensor
from .imageio import Raster

LUMA = (0.299, 0.587, 0.114)
ALPHA_MODES = ("model", "bicubic")


class ScaleError(SRError):
    """The requested output size cannot be served by the model."""


@dataclass(frozen=True)
class OutputSize:
    """Native scale to run and the exact output size (height, width) after resizing."""

    scale: int
    height: int
    width: int


def choose_native_scale(scales: list[int], wanted: float) -> int:
    """Smallest native scale ≥ ``wanted`` (the rest is an antialiased downscale)."""
    fitting = [s for s in sorted(scales) if s >= wanted - 1e-9]
    if not fitting:
        raise ScaleError(f"x{wanted:g} is above the largest native scale x{max(scales)} of this model")
    return fitting[0]


def resolve_output_size(height: int, width: int, scales: list[int], *, scale: int | None = None,
                        outscale: float | None = None, out_width: int | None = None,
                        out_height: int | None = None) -> OutputSize:
    """Native scale and output size from ``--scale``/``--outscale``/``--width``/``--height``.

    One of width/height keeps the aspect ratio; both set the exact size. ``scale`` alone runs
    that native scale; with a size request it forces the native scale used before resizing.
    """
    if outscale is not None and (out_width or out_height):
        raise ScaleError("give either an output scale or an output width/height, not both")
    for name, value in (("outscale", outscale), ("width", out_width), ("height", out_height)):
        if value is not None and value <= 0:
            raise ScaleError(f"{name} must be positive, got {value}")
    if outscale is not None:
        h, w = max(1, round(height * outscale)), max(1, round(width * outscale))
    elif out_width or out_height:
        ratio = (out_width / width) if out_width else (out_height / height)
        w = out_width or max(1, round(width * ratio))
        h = out_height or max(1, round(height * ratio))
    elif scale is not None:
        if int(scale) not in scales:
            raise ScaleError(f"this model serves scales {scales}, not x{scale}")
        return OutputSize(int(scale), height * int(scale), width * int(scale))
    elif len(scales) == 1:
        return OutputSize(scales[0], height * scales[0], width * scales[0])
    else:
        raise ScaleError(f"choose a scale: this model serves {scales}")
    wanted = max(h / height, w / width)
    native = int(scale) if scale is not None else choose_native_scale(scales, wanted)
    if native not in scales:
        raise ScaleError(f"this model serves scales {scales}, not x{native}")
    if h > height * native or w > width * native:
        raise ScaleError(f"{w}×{h} is larger than x{native} of a {width}×{height} image; use a larger scale")
    return OutputSize(native, h, w)


def resize_exact(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1×C×H×W float -> 1×C×height×width with Pillow's antialiased LANCZOS, per channel."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    channels = [Image.fromarray(c.numpy().astype(np.float32), "F").resize((width, height), Image.Resampling.LANCZOS)
                for c in x[0]]
    return torch.from_numpy(np.stack([np.asarray(c) for c in channels]))[None]


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


def _upscale_alpha(backend, alpha: np.ndarray, max_value: int, scale: int, mode: str, **options) -> torch.Tensor:
    if alpha.min() == max_value:  # fully opaque: nothing to compute
        return torch.ones(1, 1, alpha.shape[0] * scale, alpha.shape[1] * scale)
    a = to_tensor(alpha, max_value)
    if mode == "bicubic":
        with torch.inference_mode():
            return BicubicUpsample(scale)(a[:, :1]).clamp(0, 1).clone()
    return upscale_tensor(backend, a, scale, **options).mean(1, keepdim=True)


def upscale_raster(backend, raster: Raster, size: OutputSize, *, alpha: str = "model", **options) -> Raster:
    """Upscales a decoded image to ``size``; ``options`` go to ``upscale_tensor`` (tile, margin,
    self_ensemble, exact, batch_size, progress, ...). Bit depth, gray/colour, alpha and the ICC
    profile of the input are kept."""
    if alpha not in ALPHA_MODES:
        raise SRError(f"alpha mode must be one of {ALPHA_MODES}, got {alpha!r}")
    scale = size.scale
    color = upscale_tensor(backend, to_tensor(raster.color, raster.max_value), scale, **options)
    if raster.gray:
        color = luma(color)
    parts = [resize_exact(color, size.height, size.width)]
    del color
    if raster.has_alpha:
        a = _upscale_alpha(backend, raster.alpha, raster.max_value, scale, alpha, **options)
        parts.append(resize_exact(a, size.height, size.width))
    out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return Raster(quantise(out, raster.max_value, raster.pixels.dtype), raster.icc_profile, raster.source_format)


# the names the server imported before they were public
_to_tensor, _quantise, _luma = to_tensor, quantise, luma


def native_scales(backend) -> list[int]:
    return list(backend.model.scales)


def upscale_factor_text(size: OutputSize, height: int, width: int) -> str:
    exact = size.height == height * size.scale and size.width == width * size.scale
    return f"x{size.scale}" if exact else f"x{size.scale} -> {size.width}×{size.height} (x{size.width / width:.3g})"
