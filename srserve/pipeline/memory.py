"""How big a tile fits: activation memory per LR pixel, free memory, out-of-memory detection.

``bytes_per_lr_pixel`` is an analytic estimate of the peak activation memory of one forward
pass (float32), counted in feature maps per LR pixel at the point where most of them are alive
(the last upsampling stage for sub-pixel models, the HR trunk for VDSR and RRDBNet), times
``SAFETY`` for allocator slack and temporaries; ``bench/tiling.py`` prints it next to the
measured peak RSS. The estimate only has to be right within a factor of about two: a tile that
still does not fit is halved and retried (``upscale_tensor``), so the estimate sets the first
try, not correctness.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

SAFETY = 1.5
FLOAT_BYTES = 4
CPU_FRACTION = 0.5  # of the memory available to this process, leaving room for the output and others
CUDA_FRACTION = 0.8
FALLBACK_CPU_BYTES = 4 << 30

OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory",
                "not enough memory", "bad_alloc", "defaultcpuallocator")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM, ``MemoryError`` and allocation failures reported as RuntimeError
    (the CPU allocator, onnxruntime's ``RuntimeException``/``Fail``)."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    if isinstance(exc, RuntimeError) or type(exc).__name__ in ("RuntimeException", "Fail"):
        message = str(exc).lower()
        return any(m in message for m in OOM_MESSAGES)
    return False


def bytes_per_lr_pixel(model_or_backend, scale: int) -> float:
    """Estimated peak activation bytes per LR pixel of a window (float32, one image)."""
    model = getattr(model_or_backend, "model", model_or_backend)
    maps = model.spec.activation_maps(model.hparams(scale), int(scale))
    return SAFETY * FLOAT_BYTES * maps


def _cgroup_available() -> int | None:
    """Bytes left under a cgroup v2 memory limit (containers), or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes a tile may use on ``device``: a fraction of the free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FRACTION)
    env = os.environ.get("SR_CPU_MEMORY_BYTES")  # explicit budget (tests, shared machines)
    if env:
        return int(env)
    candidates = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return int((min(candidates) if candidates else FALLBACK_CPU_BYTES) * CPU_FRACTION)


def auto_tile_size(model_or_backend, scale: int, margin: int, *, device: str | torch.device = "cpu",
                   batch: int = 1, budget: int | None = None, quantum: int = 16, minimum: int = 16) -> int:
    """Largest core side (multiple of ``quantum``) whose windows (``batch`` of them) fit ``budget``."""
    budget = available_memory(device) if budget is None else budget
    per_pixel = bytes_per_lr_pixel(model_or_backend, scale) * max(1, batch)
    window = math.isqrt(max(0, int(budget / per_pixel)))
    core = (window - 2 * margin) // quantum * quantum
    return max(minimum, core)


def release_free_memory() -> bool:
    """Returns freed heap memory to the OS (glibc ``malloc_trim``). After a large image the
    allocator keeps its freed arenas mapped; without this a server's RSS stays at its largest
    request's peak. False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
