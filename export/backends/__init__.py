"""``create_backend``: the one place a model becomes a ``Backend`` (torch, onnxruntime, tensorrt).

``backend="auto"`` takes the fastest one that can run here without building anything new
(measured in ``bench/backends.py``, BENCHMARKS.md):

* CUDA: ``tensorrt`` when TensorRT is installed, else ``onnxruntime`` when it has a GPU
  execution provider, in both cases only if fp32 ONNX graphs exist for every scale; else ``torch``.
* CPU: ``onnxruntime`` when fp32 ONNX graphs exist for every scale (repository or cache), else
  ``torch``.

The choice and its reason are in ``backend.describe()["selected"]`` and logged. An explicit
``onnxruntime``/``tensorrt`` exports missing graphs on the fly into the cache (parity-checked,
see ``sources``) unless ``export_missing=False``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from srserve.backend import Backend, BackendError, TorchBackend
from srserve.models.repository import LoadedModel, Repository

from ..tensorrt import DEFAULT_MAX_BATCH, tensorrt_available

log = logging.getLogger("srserve.export")

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(model: LoadedModel, device: torch.device, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """(backend, reason) for ``auto``."""
    from .sources import OnnxArtifacts

    artifacts = OnnxArtifacts(model, cache_dir, export_missing=False)
    missing = [s for s in model.scales if not artifacts.available("sr", s, "fp32")]
    graphs = "no usable fp32 ONNX graph for x" + ",".join(map(str, missing)) if missing else "ONNX graphs present"
    if device.type == "cuda":
        if tensorrt_available() and not missing:
            return "tensorrt", f"CUDA with TensorRT, {graphs}"
        if _onnxruntime_installed() and not missing:
            from .onnxruntime_backend import has_gpu_provider

            if has_gpu_provider():
                return "onnxruntime", f"CUDA with an onnxruntime GPU provider, {graphs}"
        return "torch", f"CUDA; {graphs}" if missing else "CUDA without TensorRT or onnxruntime-gpu"
    if _onnxruntime_installed() and not missing:
        return "onnxruntime", f"CPU, {graphs}"
    return "torch", f"CPU, {graphs}" if _onnxruntime_installed() else "CPU, onnxruntime not installed"


def load_model(model: LoadedModel | str, repository: str | Path | None, scales: list[int] | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return Repository(repository).load(model, "cpu", scales)


def create_backend(model: LoadedModel | str, backend: str = "auto", *, repository: str | Path | None = None,
                   device: str | torch.device = "cpu", precision: str = "fp32", scales: list[int] | None = None,
                   self_ensemble: bool = False, compile: bool = False, channels_last: bool | None = None,
                   threads: int | None = None,
                   cache_dir: str | Path | None = None, export_missing: bool = True, tile: int | None = None,
                   max_batch: int = DEFAULT_MAX_BATCH, force_precision: bool = False) -> Backend:
    """A ready backend for ``model`` (a ``LoadedModel`` or a repository name).

    ``precision``: fp32/fp16/bf16; reduced precision runs only on CUDA for fp16-safe models
    unless ``force_precision``. ``tile``: the core tile size the pipeline will use (sets the
    TensorRT profiles; default: the model's default tiling). ``self_ensemble``: also load the
    in-graph ensemble (``run_ensemble``) where the backend has one. ``compile``/``channels_last``:
    torch only (channels_last defaults to on for CUDA). ``threads``: onnxruntime's CPU threads.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError("CUDA was requested but no GPU is available; use --device cpu")
    loaded = load_model(model, repository, scales)
    reason = "requested"
    if backend == "auto":
        backend, reason = choose_backend(loaded, device, cache_dir)
        reason = f"auto: {reason}"
    log.info("model %s: backend %s (%s)", loaded.name, backend, reason)
    result = _create(backend, loaded, device, precision, self_ensemble=self_ensemble, compile=compile,
                     channels_last=channels_last, threads=threads, cache_dir=cache_dir,
                     export_missing=export_missing, tile=tile, max_batch=max_batch, force_precision=force_precision)
    result.selected = reason
    return result


def _create(backend: str, model: LoadedModel, device: torch.device, precision: str, *, self_ensemble: bool,
            compile: bool, channels_last: bool | None, threads: int | None, cache_dir, export_missing: bool,
            tile: int | None, max_batch: int, force_precision: bool) -> Backend:
    if backend == "torch":
        return TorchBackend(model, device, precision, compile=compile, channels_last=channels_last,
                            force_precision=force_precision)
    if backend == "onnxruntime":
        if not _onnxruntime_installed():
            raise BackendError("onnxruntime is not installed (pip install 'srserve[export]')")
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device, precision, cache_dir=cache_dir, export_missing=export_missing,
                                  threads=threads, self_ensemble=self_ensemble, tile=tile, max_batch=max_batch,
                                  force_precision=force_precision)
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(model, device, precision, cache_dir=cache_dir, export_missing=export_missing, tile=tile,
                           max_batch=max_batch, force_precision=force_precision)
