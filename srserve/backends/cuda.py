"""Small facts about GPUs and TensorRT the runtime backends and the engine builder share."""
from __future__ import annotations

import importlib.util
import os
import shutil

import torch

DEFAULT_MAX_BATCH = 8
TENSORRT_MIN_MAJOR = 10  # srserve uses the TensorRT 10 API


def tensorrt_available() -> bool:
    """TensorRT 10+ importable and a CUDA GPU present."""
    try:
        import tensorrt
    except ImportError:
        return False
    return int(tensorrt.__version__.split(".")[0]) >= TENSORRT_MIN_MAJOR and torch.cuda.is_available()


def compile_toolchain_missing(device_type: str = "cuda") -> str:
    """What the compiled engine lacks here to build its packages ("" when nothing): Inductor
    generates Triton kernels on CUDA and compiles its C++ runner with the host compiler."""
    missing = []
    if device_type == "cuda" and importlib.util.find_spec("triton") is None:
        missing.append("triton")
    if not any(shutil.which(c) for c in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++"))):
        missing.append("a C++ compiler")
    return " and ".join(missing)


def tile_window(model, scale: int, tile: int | None = None) -> int:
    """The largest window the pipeline feeds for ``model`` at ``scale`` with core ``tile`` (the
    model's default tile when None): ``tile + 2·margin``, rounded to the tile alignment."""
    from srserve.pipeline.tiling import default_tiling, plan_tiles

    cfg = default_tiling(model, scale)
    core = cfg.tile_size if tile is None else int(tile)
    big = 4 * (core + 2 * cfg.margin)
    plan = plan_tiles(big, big, scale, core, cfg.margin, feather=cfg.feather, align=cfg.align)
    return int(plan.tile_shape[0])


def device_index(device: torch.device | str) -> int:
    """The CUDA ordinal of ``device`` (``cuda`` alone means torch's current device, not 0)."""
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def gpu_slug(name: str) -> str:
    """A GPU name usable in a file name."""
    return "".join(c if c.isalnum() else "_" for c in name)
