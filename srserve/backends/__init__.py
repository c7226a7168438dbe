"""The runtime side: the ``Backend`` interface, its engines, and ``create_backend``, the one place
a model becomes a backend (used by the CLI, evaluation, the export checks and the server).

``backend="auto"`` takes the fastest engine installed (measured in ``bench/backends.py``,
BENCHMARKS.md):

* CUDA: ``tensorrt`` when TensorRT is installed, else ``onnxruntime`` when it has a GPU
  execution provider, in both cases only if fp32 ONNX graphs exist for every scale; else ``torch``.
* CPU: ``openvino``, else ``onnxruntime``, else ``torch``: a graph engine when its fp32 ONNX
  graphs exist (repository or cache) or can be exported into the cache (a ``builder`` is passed
  and ``onnx``/``onnxruntime``, which the export and its parity check need, are installed). With
  ``precision="auto"`` OpenVINO runs bf16 where the CPU has native bf16 and the model's scale
  passed the CPU bf16 gate (``base.resolve_cpu_bf16``).

When the engine ``auto`` chose cannot be created (an export or a parity check fails), the next
one is tried, down to ``torch``. The choice and its reason are in ``backend.describe()["selected"]``
and logged. Graph-based backends get missing graphs (and TensorRT engines) from the ``builder``
passed in (``srserve.export.ExportBuilder``), or fail with a one-line error naming the command
to run. A backend asked for by name whose package is missing is a one-line error.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from srserve.models.errors import SRError
from srserve.models.repository import LoadedModel, Repository

from .base import PRECISIONS, REQUESTS, Backend, BackendError, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH, tensorrt_available
from .sources import ArtifactBuilder, OnnxArtifacts
from .torch_backend import TorchBackend

__all__ = [
    "BACKENDS", "PRECISIONS", "REQUESTS", "ArtifactBuilder", "Backend", "BackendError", "PrecisionGuard",
    "TorchBackend", "auto_candidates", "choose_backend", "create_backend", "resolve_device", "resolve_precision",
]

log = logging.getLogger("srserve.backends")

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
INSTALL = {"onnxruntime": "pip install 'srserve[export]'", "openvino": "pip install 'srserve[serve]'",
           "tensorrt": "use the GPU image, docker/requirements-gpu.txt"}
CPU_ORDER = ("openvino", "onnxruntime")  # fastest first (BENCHMARKS.md), torch after them
EXPORT_NEEDS = ("onnx", "onnxruntime")  # the exporter and its parity check


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


def missing_graphs(model: LoadedModel, cache_dir: str | Path | None = None) -> list[int]:
    """Scales without a usable fp32 SR graph (or, for DASR, encoder graph)."""
    artifacts = OnnxArtifacts(model, cache_dir)
    kinds = ["sr"] + (["degradation"] if model.needs_degradation else [])
    return [s for s in model.scales if not all(artifacts.available(k, s, "fp32") for k in kinds)]


def auto_candidates(model: LoadedModel, device: torch.device, cache_dir: str | Path | None = None,
                    builder: ArtifactBuilder | None = None) -> list[tuple[str, str]]:
    """The engines ``auto`` tries, fastest first, each with the reason it qualifies; ends with torch."""
    missing = missing_graphs(model, cache_dir)
    scales = ",".join(map(str, missing))
    can_export = builder is not None and all(installed(p) for p in EXPORT_NEEDS)
    if not missing:
        graphs = "ONNX graphs present"
    elif can_export:
        graphs = f"ONNX graphs for x{scales} exported into the cache"
    else:
        graphs = f"no usable fp32 ONNX graph for x{scales}"
    if device.type == "cuda":
        found = []
        if tensorrt_available() and not missing:
            found.append(("tensorrt", f"CUDA with TensorRT, {graphs}"))
        if installed("onnxruntime") and not missing:
            from .onnxruntime_backend import has_gpu_provider

            if has_gpu_provider():
                found.append(("onnxruntime", f"CUDA with an onnxruntime GPU provider, {graphs}"))
        return found + [("torch", f"CUDA; {graphs}" if missing else "CUDA without TensorRT or onnxruntime-gpu")]
    engines = [e for e in CPU_ORDER if installed(PACKAGES[e])]
    if engines and (not missing or can_export):
        return [(e, f"CPU, {e} is the fastest engine installed, {graphs}" if i == 0 else
                 f"CPU, {e}, {graphs}") for i, e in enumerate(engines)] + [("torch", "CPU, fallback")]
    why = graphs if engines else "neither openvino nor onnxruntime is installed"
    return [("torch", f"CPU, {why}")]


def choose_backend(model: LoadedModel, device: torch.device, cache_dir: str | Path | None = None,
                   builder: ArtifactBuilder | None = None) -> tuple[str, str]:
    """(backend, reason) for ``auto``: its first candidate."""
    return auto_candidates(model, device, cache_dir, builder)[0]


def load_model(model: LoadedModel | str, repository: str | Path | None, scales: list[int] | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return Repository(repository).load(model, "cpu", scales)


def create_backend(model: LoadedModel | str, backend: str = "auto", *, repository: str | Path | None = None,
                   device: str | torch.device | None = "cpu", precision: str = "auto",
                   scales: list[int] | None = None, self_ensemble: bool = False, compile: bool = False,
                   channels_last: bool | None = None, threads: int | None = None, cache_dir: str | Path | None = None,
                   builder: ArtifactBuilder | None = None, tile: int | None = None,
                   max_batch: int = DEFAULT_MAX_BATCH, force_precision: bool = False) -> Backend:
    """A ready backend for ``model`` (a ``LoadedModel`` or a repository name).

    ``precision``: auto/fp32/fp16/bf16 (``base``: reduced precision runs only where its gate
    allows, unless ``force_precision``). ``tile``: the core tile size the pipeline will use (sets
    the TensorRT profiles; default: the model's default tiling). ``self_ensemble``: also load the
    in-graph ensemble (``run_ensemble``) where the backend has one. ``compile``/``channels_last``:
    torch only (channels_last defaults to on for CUDA). ``threads``: onnxruntime's and OpenVINO's
    CPU threads. ``builder``: makes missing graphs/engines (``srserve.export.ExportBuilder``).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = resolve_device(device)
    loaded = load_model(model, repository, scales)
    options = dict(precision=precision, self_ensemble=self_ensemble, compile=compile, channels_last=channels_last,
                   threads=threads, cache_dir=cache_dir, builder=builder, tile=tile, max_batch=max_batch,
                   force_precision=force_precision)
    if backend != "auto":
        return _create(backend, "requested", loaded, device, **options)
    failures = []
    for name, reason in auto_candidates(loaded, device, cache_dir, builder):
        reason = f"auto: {reason}" + "".join(f"; {f}" for f in failures)
        try:
            return _create(name, reason, loaded, device, **options)
        except SRError as exc:
            if name == "torch":
                raise
            log.warning("model %s: %s failed, trying the next engine: %s", loaded.name, name, exc)
            failures.append(f"{name} failed: {exc}")
    raise AssertionError("auto_candidates always ends with torch")


def _create(backend: str, reason: str, loaded: LoadedModel, device: torch.device, *, precision: str,
            self_ensemble: bool, compile: bool, channels_last: bool | None, threads: int | None,
            cache_dir: str | Path | None, builder: ArtifactBuilder | None, tile: int | None, max_batch: int,
            force_precision: bool) -> Backend:
    package = PACKAGES.get(backend)
    if package and not installed(package):
        raise BackendError(f"the {backend} backend needs the {package!r} package, which is not installed "
                           f"({INSTALL[backend]})")
    if backend == "torch":
        result = TorchBackend(loaded, device, precision, compile=compile, channels_last=channels_last,
                              force_precision=force_precision)
    elif backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        result = OnnxRuntimeBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, threads=threads,
                                    self_ensemble=self_ensemble, tile=tile, max_batch=max_batch,
                                    force_precision=force_precision)
    elif backend == "openvino":
        from .openvino_backend import OpenVinoBackend

        result = OpenVinoBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, threads=threads,
                                 self_ensemble=self_ensemble, force_precision=force_precision)
    else:
        from .tensorrt_backend import TensorRTBackend

        result = TensorRTBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, tile=tile,
                                 max_batch=max_batch, force_precision=force_precision)
    result.selected = reason
    log.info("model %s: backend %s %s (%s)", loaded.name, backend, result.precision, reason)
    return result
