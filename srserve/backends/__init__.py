"""The runtime side: the ``Backend`` interface, its engines, and ``create_backend``, the one place
a model becomes a backend (used by the CLI, evaluation, the export checks and the server).

``backend="auto"`` takes the fastest one that can run here (``bench/backends.py``,
``bench/gpu_suite.py``, BENCHMARKS.md), trying the next when one cannot be created:

* CUDA: ``tensorrt`` when TensorRT is installed and fp32 ONNX graphs exist for every scale, else
  ``compiled`` (TorchInductor packages + CUDA graphs) when Triton and a C++ compiler are there
  to build its packages, else ``onnxruntime`` when it has a GPU execution provider and the fp32
  graphs exist, else ``torch``.
* CPU: ``onnxruntime`` when fp32 ONNX graphs exist for every scale (repository or cache), else
  ``torch``.

Auto never exports ONNX graphs; TensorRT engines and compiled packages are built (minutes, once,
then cached) on first use. The choice and its reason, including any candidate that failed, are
in ``backend.describe()["selected"]`` and logged. Graph-based and compiled backends get what is
missing from the ``builder`` passed in (``srserve.export.ExportBuilder``), or fail with a
one-line error naming the command to run.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from srserve.models.errors import SRError
from srserve.models.repository import LoadedModel, Repository

from .base import PRECISIONS, Backend, BackendError, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH, compile_toolchain_missing, tensorrt_available
from .sources import ArtifactBuilder, OnnxArtifacts
from .torch_backend import TorchBackend

__all__ = [
    "BACKENDS", "PRECISIONS", "ArtifactBuilder", "Backend", "BackendError", "PrecisionGuard", "TorchBackend",
    "auto_candidates", "choose_backend", "create_backend", "resolve_device", "resolve_precision",
]

log = logging.getLogger("srserve.backends")

BACKENDS = ("auto", "torch", "compiled", "onnxruntime", "tensorrt")


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


def auto_candidates(model: LoadedModel, device: torch.device, cache_dir: str | Path | None = None
                    ) -> list[tuple[str, str]]:
    """(backend, reason) for ``auto``, best first; ``torch`` is always last."""
    artifacts = OnnxArtifacts(model, cache_dir)
    missing = [s for s in model.scales if not artifacts.available("sr", s, "fp32")]
    graphs = "no usable fp32 ONNX graph for x" + ",".join(map(str, missing)) if missing else "ONNX graphs present"
    if device.type != "cuda":
        if installed("onnxruntime") and not missing:
            return [("onnxruntime", f"CPU, {graphs}"), ("torch", "CPU, after onnxruntime")]
        return [("torch", f"CPU, {graphs}" if installed("onnxruntime") else "CPU, onnxruntime not installed")]
    candidates = []
    trt = tensorrt_available()
    if trt and not missing:
        candidates.append(("tensorrt", f"CUDA with TensorRT, {graphs}"))
    toolchain = compile_toolchain_missing("cuda")
    if not toolchain:
        why = "TensorRT not installed" if not trt else "after tensorrt" if not missing else f"TensorRT needs {graphs}"
        candidates.append(("compiled", f"CUDA, {why}; TorchInductor packages with CUDA graphs"))
    if installed("onnxruntime") and not missing:
        from .onnxruntime_backend import has_gpu_provider

        if has_gpu_provider():
            candidates.append(("onnxruntime", f"CUDA with an onnxruntime GPU provider, {graphs}"))
    if candidates:
        torch_reason = "CUDA, after " + ", ".join(name for name, _ in candidates)
    else:
        lacking = [f"the compiled engine lacks {toolchain}", graphs if missing else "no onnxruntime-gpu"]
        torch_reason = "CUDA, " + "; ".join(lacking)
    return candidates + [("torch", torch_reason)]


def choose_backend(model: LoadedModel, device: torch.device, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """(backend, reason): ``auto``'s first choice."""
    return auto_candidates(model, device, cache_dir)[0]


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
    TensorRT profiles and the compiled engine's graph windows; default: the model's default
    tiling). ``max_batch``: the most tiles per call (TensorRT profiles, compiled packages). ``self_ensemble``: also load the
    in-graph ensemble (``run_ensemble``) where the backend has one. ``compile``/``channels_last``:
    torch only (channels_last defaults to on for CUDA). ``threads``: onnxruntime's CPU threads.
    ``builder``: makes missing graphs/engines/packages (``srserve.export.ExportBuilder``).
    ``auto`` tries ``auto_candidates`` in order and takes the first that can be created.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = resolve_device(device)
    loaded = load_model(model, repository, scales)
    options = dict(precision=precision, self_ensemble=self_ensemble, compile=compile, channels_last=channels_last,
                   threads=threads, cache_dir=cache_dir, builder=builder, tile=tile, max_batch=max_batch,
                   force_precision=force_precision)
    if backend != "auto":
        log.info("model %s: backend %s (requested)", loaded.name, backend)
        return _create(backend, loaded, device, **options)
    failed: list[str] = []
    candidates = auto_candidates(loaded, device, cache_dir)
    for i, (name, reason) in enumerate(candidates):
        reason = f"auto: {reason}" + (f" ({'; '.join(failed)})" if failed else "")
        log.info("model %s: backend %s (%s)", loaded.name, name, reason)
        try:
            result = _create(name, loaded, device, **options)
        except SRError as exc:
            if i == len(candidates) - 1:
                raise
            log.warning("model %s: backend %s cannot run here (%s); trying %s", loaded.name, name, exc,
                        candidates[i + 1][0])
            failed.append(f"{name} failed: {exc}")
            continue
        result.selected = reason
        return result
    raise AssertionError("auto_candidates always ends with torch")


def _create(backend: str, loaded: LoadedModel, device: torch.device, *, precision, self_ensemble, compile,
            channels_last, threads, cache_dir, builder, tile, max_batch, force_precision) -> Backend:
    if backend == "torch":
        return TorchBackend(loaded, device, precision, compile=compile, channels_last=channels_last,
                            force_precision=force_precision)
    if backend == "compiled":
        from .compiled_backend import CompiledBackend

        return CompiledBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, tile=tile,
                               max_batch=max_batch, force_precision=force_precision)
    if backend == "onnxruntime":
        if not installed("onnxruntime"):
            raise BackendError("onnxruntime is not installed (pip install 'srserve[export]')")
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, threads=threads,
                                  self_ensemble=self_ensemble, tile=tile, max_batch=max_batch,
                                  force_precision=force_precision)
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, tile=tile,
                           max_batch=max_batch, force_precision=force_precision)
