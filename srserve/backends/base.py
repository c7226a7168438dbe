"""The interface every inference backend implements, and the precision rules they share.

The pipeline and the server only talk to ``Backend``: ``run`` maps a batch of LR tiles to SR
tiles for one scale (RGB, float32, N×3×h×w in [0, 1] -> N×3×sh×sw, not clamped), and
``degradation`` gives DASR's per-image degradation vector. ``srserve.backends.create_backend``
makes any of them.

Reduced precision (fp16/bf16) is a request, not a promise: it runs only on CUDA and only for
models whose ``fp16_safe`` flag is set (``resolve_precision``), and every reduced-precision
batch whose output holds NaN/Inf is run again in fp32 (``PrecisionGuard``; other tools return
black images there). ``fp16_fallbacks`` counts those batches for the server's metrics.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol

import torch

from srserve.models.errors import SRError
from srserve.models.repository import LoadedModel

log = logging.getLogger("srserve.backends")

PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackendError(SRError):
    """A backend cannot be created or cannot run as asked (one line for the user)."""


class Backend(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    model: LoadedModel
    device: torch.device
    precision: str  # the precision it runs: "fp32", "fp16", "bf16"
    fp16_fallbacks: int  # reduced-precision batches re-run in fp32 because of NaN/Inf

    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor: ...

    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None: ...

    def describe(self) -> dict: ...


def resolve_precision(requested: str, device: torch.device, fp16_safe: bool, *, force: bool = False) -> tuple[str, str]:
    """The precision to run and, when it differs from ``requested``, why (else "").

    ``force`` skips the CUDA/``fp16_safe`` rule: for tests and for measuring a model on the way
    to setting its flag.
    """
    if requested not in PRECISIONS:
        raise BackendError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "fp32" or force:
        return requested, ""
    if torch.device(device).type != "cuda":
        return "fp32", f"{requested} runs on CUDA only; using fp32"
    if not fp16_safe:
        return "fp32", f"the model is not marked fp16-safe; using fp32 instead of {requested}"
    return requested, ""


class PrecisionGuard:
    """Checks reduced-precision outputs; a batch with NaN/Inf is re-run in fp32 and counted."""

    def __init__(self, precision: str, label: str = ""):
        self.precision = precision
        self.label = label
        self.fallbacks = 0

    def check(self, out: torch.Tensor, rerun_fp32: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.precision == "fp32" or bool(torch.isfinite(out).all()):
            return out
        self.fallbacks += 1
        log.warning("%s: %s output has NaN/Inf; batch re-run in fp32 (%d so far)", self.label, self.precision,
                    self.fallbacks)
        return rerun_fp32()
