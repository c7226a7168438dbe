"""The interface every inference backend implements, and the precision rules they share.

The pipeline and the server only talk to ``Backend``: ``run`` maps a batch of LR tiles to SR
tiles for one scale (RGB, float32, N×3×h×w in [0, 1] -> N×3×sh×sw, not clamped), and
``degradation`` gives DASR's per-image degradation vector. ``srserve.backends.create_backend``
makes any of them.

Reduced precision (fp16/bf16) is a request, not a promise: on CUDA it runs only for models
whose ``fp16_safe`` flag is set (``resolve_precision``); on the CPU only bf16 in OpenVINO, only
on CPUs with native bf16 and only for scales that passed the CPU bf16 gate
(``resolve_cpu_bf16``). ``auto`` asks for the fastest precision that passed its gate: bf16 in
OpenVINO where the CPU bf16 rule allows it, fp32 everywhere else. Every reduced-precision batch
whose output holds NaN/Inf is run again in fp32 (``PrecisionGuard``; other tools return black
images there). ``fp16_fallbacks`` counts those batches for the server's metrics.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol

import torch

from srserve.models.errors import SRError
from srserve.models.repository import LoadedModel

log = logging.getLogger("srserve.backends")

PRECISIONS = ("fp32", "fp16", "bf16")
REQUESTS = ("auto", *PRECISIONS)  # what a user may ask for
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


class GraphEngine:
    """What the graph engines (onnxruntime, OpenVINO) share: one graph per kind ("sr",
    "ensemble", "degradation") and scale, fed by input name. A subclass implements
    ``_run_graph(kind, x, scale, degradation)``."""

    model: LoadedModel

    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor:
        return self._run_graph("sr", x, scale, degradation)

    def run_ensemble(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor:
        """The self-ensemble ×8 in one graph: the mean of the 8 transforms, not clamped."""
        return self._run_graph("ensemble", x, scale, degradation)

    def _feeds(self, names: list[str], *tensors: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The given tensors (``None`` = absent, e.g. no degradation vector) by the graph's input names."""
        given = [t for t in tensors if t is not None]
        if len(given) != len(names):
            raise BackendError(f"model {self.model.name!r} takes inputs {names}, got {len(given)} tensors")
        return dict(zip(names, given))

    def _run_graph(self, kind: str, x: torch.Tensor, scale: int, degradation: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def resolve_precision(requested: str, device: torch.device, fp16_safe: bool, *, force: bool = False) -> tuple[str, str]:
    """The precision to run and, when it differs from ``requested``, why (else "").

    ``force`` skips the CUDA/``fp16_safe`` rule: for tests and for measuring a model on the way
    to setting its flag.
    """
    check_request(requested)
    if requested == "auto":
        return "fp32", ""
    if requested == "fp32" or force:
        return requested, ""
    if torch.device(device).type != "cuda":
        return "fp32", f"{requested} runs on CUDA only; using fp32"
    if not fp16_safe:
        return "fp32", f"the model is not marked fp16-safe; using fp32 instead of {requested}"
    return requested, ""


def check_request(requested: str) -> None:
    if requested not in REQUESTS:
        raise BackendError(f"unknown precision {requested!r}; choose one of {', '.join(REQUESTS)}")


def resolve_cpu_bf16(requested: str, model: LoadedModel, scale: int, *, has_bf16: bool,
                     force: bool = False) -> tuple[str, str]:
    """The precision OpenVINO runs ``model`` at ``scale`` on the CPU, and why when it is not
    what was asked: bf16 for ``auto``/``bf16`` when the CPU has native bf16 (``has_bf16``, see
    ``srserve.backends.cpu``) and that scale passed the CPU bf16 gate; else fp32. ``force`` runs
    a bf16 request ungated (tests, and the gate measuring it)."""
    check_request(requested)
    if requested == "fp32":
        return "fp32", ""
    if requested == "fp16":
        return "fp32", "the CPU runs fp32 or bf16; using fp32 instead of fp16"
    if not has_bf16:
        why = "this CPU has no native bf16 (AMX-BF16 or AVX512-BF16)"
    elif force or model.cpu_bf16_safe(scale):
        return "bf16", ""
    else:
        why = f"x{scale} has not passed the CPU bf16 gate (srserve gate cpu-bf16)"
    return "fp32", f"{requested}: {why}; using fp32"


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
