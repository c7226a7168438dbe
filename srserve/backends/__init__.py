"""The runtime side: the ``Backend`` interface, its engines, and ``create_backend``, the one place
a model becomes a backend (used by the CLI, evaluation, the export checks and the server).

``backend="auto"`` takes the fastest one that can run here without building anything new
(measured in ``bench/backends.py``, BENCHMARKS.md):

* CUDA: ``tensorrt`` when TensorRT is installed, else ``onnxruntime`` when it has a GPU
  execution provider, in both cases only if fp32 ONNX graphs exist for every scale; else ``torch``.
* CPU: ``onnxruntime`` when fp32 ONNX graphs exist for every scale (repository or cache), else
  ``torch``.

The choice and its reason are in ``backend.describe()["selected"]`` and logged. Graph-based
backends get missing graphs (and TensorRT engines) from the ``builder`` passed in
(``srserve.export.ExportBuilder``), or fail with a one-line error naming the command to run.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from srserve.models.repository import LoadedModel, Repository

from .base import PRECISIONS, Backend, BackendError, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH, tensorrt_available
from .sources import ArtifactBuilder, OnnxArtifacts
from .torch_backend import TorchBackend

__all__ = [
    "BACKENDS", "PRECISIONS", "ArtifactBuilder", "Backend", "BackendError", "PrecisionGuard", "TorchBackend",
    "choose_backend", "create_backend", "resolve_device", "resolve_precision",
]

log = logging.getLogger("srserve.backends")

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``auto`` -> CUDA when present, else CPU; CUDA asked for without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError("CUDA was requested but no GPU is available; use --device cpu")
    return device


def choose_backend(model: LoadedModel, device: torch.device, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """(backend, reason) for ``auto``."""
    artifacts = OnnxArtifacts(model, cache_dir)
    missing = [s for s in model.scales if not artifacts.available("sr", s, "fp32")]
    graphs = "no usable fp32 ONNX graph for x" + ",".join(map(str, missing)) if missing else "ONNX graphs present"
    if device.type == "cuda":
        if tensorrt_available() and not missing:
            return "tensorrt", f"CUDA with TensorRT, {graphs}"
        if installed("onnxruntime") and not missing:
            from .onnxruntime_backend import has_gpu_provider

            if has_gpu_provider():
                return "onnxruntime", f"CUDA with an onnxruntime GPU provider, {graphs}"
        return "torch", f"CUDA; {graphs}" if missing else "CUDA without TensorRT or onnxruntime-gpu"
    if installed("onnxruntime") and not missing:
        return "onnxruntime", f"CPU, {graphs}"
    return "torch", f"CPU, {graphs}" if installed("onnxruntime") else "CPU, onnxruntime not installed"


def load_model(model: LoadedModel | str, repository: str | Path | None, scales: list[int] | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return Repository(repository).load(model, "cpu", scales)


def create_backend(model: LoadedModel | str, backend: str = "auto", *, repository: str | Path | None = None,
                   device: str | torch.device | None = "cpu", precision: str = "fp32",
                   scales: list[int] | None = None, self_ensemble: bool = False, compile: bool = False,
                   channels_last: bool | None = None, threads: int | None = None, cache_dir: str | Path | None = None,
                   builder: ArtifactBuilder | None = None, tile: int | None = None,
                   max_batch: int = DEFAULT_MAX_BATCH, force_precision: bool = False) -> Backend:
    """A ready backend for ``model`` (a ``LoadedModel`` or a repository name).

    ``precision``: fp32/fp16/bf16; reduced precision runs only on CUDA for fp16-safe models
    unless ``force_precision``. ``tile``: the core tile size the pipeline will use (sets the
    TensorRT profiles; default: the model's default tiling). ``self_ensemble``: also load the
    in-graph ensemble (``run_ensemble``) where the backend has one. ``compile``/``channels_last``:
    torch only (channels_last defaults to on for CUDA). ``threads``: onnxruntime's CPU threads.
    ``builder``: makes missing graphs/engines (``srserve.export.ExportBuilder``).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = resolve_device(device)
    loaded = load_model(model, repository, scales)
    reason = "requested"
    if backend == "auto":
        backend, reason = choose_backend(loaded, device, cache_dir)
        reason = f"auto: {reason}"
    log.info("model %s: backend %s (%s)", loaded.name, backend, reason)
    if backend == "torch":
        result = TorchBackend(loaded, device, precision, compile=compile, channels_last=channels_last,
                              force_precision=force_precision)
    elif backend == "onnxruntime":
        if not installed("onnxruntime"):
            raise BackendError("onnxruntime is not installed (pip install 'srserve[export]')")
        from .onnxruntime_backend import OnnxRuntimeBackend

        result = OnnxRuntimeBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, threads=threads,
                                    self_ensemble=self_ensemble, tile=tile, max_batch=max_batch,
                                    force_precision=force_precision)
    else:
        from .tensorrt_backend import TensorRTBackend

        result = TensorRTBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, tile=tile,
                                 max_batch=max_batch, force_precision=force_precision)
    result.selected = reason
    return result
