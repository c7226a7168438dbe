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

from srserve.models.errors import SRError

from .imageio import Raster
from .job import ALPHA_MODES, OutputSize, Progress, TilingRequest, create_job, run_job

__all__ = ["ALPHA_MODES", "OutputSize", "ScaleError", "choose_native_scale", "resolve_output_size", "upscale_raster"]


class ScaleError(SRError):
    """The requested output size cannot be served by the model."""


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


def upscale_raster(backend, raster: Raster, size: OutputSize, *, alpha: str = "model", self_ensemble: bool = False,
                   tile: int | None = None, margin: int | None = None, feather: int | None = None,
                   exact: bool = False, batch_size: int = 1, progress: Progress | None = None) -> Raster:
    """Upscales a decoded image to ``size`` (``job.create_job`` + ``job.run_job``). Bit depth,
    gray/colour, alpha and the ICC profile of the input are kept."""
    tiling = TilingRequest(tile=tile, margin=margin, feather=feather, exact=exact, batch_size=batch_size)
    job = create_job(backend, raster, size, self_ensemble=self_ensemble, alpha=alpha, tiling=tiling)
    return run_job(backend, job, batch_size=batch_size, progress=progress).compose()


def native_scales(backend) -> list[int]:
    return list(backend.model.scales)


def upscale_factor_text(size: OutputSize, height: int, width: int) -> str:
    exact = size.height == height * size.scale and size.width == width * size.scale
    return f"x{size.scale}" if exact else f"x{size.scale} -> {size.width}×{size.height} (x{size.width / width:.3g})"
