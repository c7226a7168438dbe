"""The runtime side: the ``Backend`` interface, its engines, and ``create_backend``, the one place
a model becomes a backend (used by the CLI, evaluation, the export checks and the server).

``backend="auto"`` takes the fastest engine that can run here (``bench/backends.py``,
``bench/gpu_suite.py``, BENCHMARKS.md), trying the next when one cannot be created:

* CUDA: ``tensorrt`` when TensorRT is installed and fp32 ONNX graphs exist for every scale, else
  ``compiled`` (TorchInductor packages + CUDA graphs) when Triton and a C++ compiler are there
  to build its packages, else ``onnxruntime`` when it has a GPU execution provider and the fp32
  graphs exist, else ``torch``.
* CPU: ``openvino``, else ``onnxruntime``, else ``torch``: a graph engine when its fp32 ONNX
  graphs exist (repository or cache) or can be exported into the cache (a ``builder`` is passed
  and ``onnx``/``onnxruntime``, which the export and its parity check need, are installed). With
  ``precision="auto"`` OpenVINO runs bf16 where the CPU has native bf16 and the model's scale
  passed the CPU bf16 gate (``base.resolve_cpu_bf16``).

TensorRT engines and compiled packages are built (minutes, once, then cached) on first use. The
choice and its reason, including any candidate that failed, are in
``backend.describe()["selected"]`` and logged. Graph-based and compiled backends get what is
missing from the ``builder`` passed in (``srserve.export.ExportBuilder``), or fail with a
one-line error naming the command to run. A backend asked for by name whose package is missing
is a one-line error.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from srserve.models.errors import SRError
from srserve.models.repository import LoadedModel, Repository

from .base import PRECISIONS, REQUESTS, Backend, BackendError, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH, compile_toolchain_missing, tensorrt_available
from .sources import ArtifactBuilder, OnnxArtifacts
from .torch_backend import TorchBackend

__all__ = [
    "BACKENDS", "PRECISIONS", "REQUESTS", "ArtifactBuilder", "Backend", "BackendError", "PrecisionGuard",
    "TorchBackend", "auto_candidates", "choose_backend", "create_backend", "resolve_device", "resolve_precision",
]

log = logging.getLogger("srserve.backends")

BACKENDS = ("auto", "torch", "compiled", "onnxruntime", "openvino", "tensorrt")
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
        return cuda_candidates(missing, graphs)
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


def cuda_candidates(missing: list[int], graphs: str) -> list[tuple[str, str]]:
    """tensorrt -> compiled -> onnxruntime-gpu -> torch, each where it can run."""
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
    the TensorRT profiles and the compiled engine's graph windows; default: the model's default
    tiling). ``max_batch``: the most tiles per call (TensorRT profiles, compiled packages).
    ``self_ensemble``: also load the in-graph ensemble (``run_ensemble``) where the backend has
    one. ``compile``/``channels_last``: torch only (channels_last defaults to on for CUDA).
    ``threads``: onnxruntime's and OpenVINO's CPU threads. ``builder``: makes missing
    graphs/engines/packages (``srserve.export.ExportBuilder``). ``auto`` tries
    ``auto_candidates`` in order and takes the first that can be created.
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
    elif backend == "compiled":
        from .compiled_backend import CompiledBackend

        result = CompiledBackend(loaded, device, precision, cache_dir=cache_dir, builder=builder, tile=tile,
                                 max_batch=max_batch, force_precision=force_precision)
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
