"""AOTInductor packages (``.pt2``): the compiled engine's networks, built once and cached.

``torch.export`` captures the model's own ``SRNet`` (the ONNX exporter's ``SRGraph``, fp16/bf16
inside ``HalfPrecision``) with a dynamic batch of 1..``max_batch`` and dynamic height and width
from 8 to ``max_side`` (the tile window) in multiples of the tile alignment; Inductor compiles it
ahead of time (``max_autotune`` on CUDA: Triton/cuBLAS/cuDNN choices timed on this GPU) into a
package of generated kernels and a C++ runner that the runtime loads in milliseconds, so a
restart does not recompile. Building takes minutes on a GPU and needs a C++ compiler.

A package is only valid for the weights, the torch version, the device (GPU name and compute
capability, or the CPU's vector ISA) and the options it was built with, so those are its cache
key; packages live in ``$SR_ENGINE_CACHE/aoti/<model>-x<scale>-<precision>-<key>.pt2`` with a
``.json`` record, in the TensorRT engine cache's layout (``EngineCache``: a stale or foreign
package is never found, concurrent builds take a lock). Each package is parity-checked against
PyTorch right after it is built with the ONNX export's criterion (fp32: ±1 8-bit level; fp16 and
bf16: finite and within ``FP16_MAX_LEVELS``), on a random batch and a real image at the full
window, and only a package that passes is stored.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import platform
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srserve.backends.artifacts import ExportError, weights_identity
from srserve.backends.cuda import DEFAULT_MAX_BATCH, device_index
from srserve.models.repository import LoadedModel
from srserve.pipeline.tiling import tile_alignment

from .graphs import HalfPrecision, SRGraph
from .tensorrt import EngineCache

log = logging.getLogger("srserve.export")

PACKAGE_FORMAT = "srserve-aoti/1"
AOTI_PRECISIONS = ("fp32", "fp16", "bf16")
MIN_SIDE = 8  # smallest window side a package accepts (as the TensorRT profiles)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PackageShape:
    """What a package accepts: batches up to ``max_batch``, square-or-not windows with sides in
    [``min_side``, ``max_side``], multiples of ``align``."""

    max_batch: int
    max_side: int
    align: int = 1
    min_side: int = MIN_SIDE

    def accepts(self, shape: tuple[int, ...]) -> bool:
        n, _, h, w = shape
        return 1 <= n <= self.max_batch and all(
            self.min_side <= s <= self.max_side and s % self.align == 0 for s in (h, w))

    def to_json(self) -> dict:
        return {"max_batch": self.max_batch, "max_side": self.max_side, "align": self.align,
                "min_side": self.min_side}


def package_shape(model: LoadedModel, scale: int, max_side: int, max_batch: int) -> PackageShape:
    align = tile_alignment(model, scale)
    top = max(align, max_side // align * align)
    low = min(math.ceil(MIN_SIDE / align) * align, top)
    return PackageShape(max(1, int(max_batch)), top, align, low)


@dataclass
class PackageRecord:
    """The ``.json`` beside a package: its key's inputs, so a lookup can verify them."""

    key: str
    label: str
    weights_sha256: str
    precision: str
    shape: dict
    autotune: bool
    environment: dict
    format: str = PACKAGE_FORMAT
    build_seconds: float = 0.0
    created: str = ""
    parity: dict = field(default_factory=dict)


def compile_environment(device: torch.device) -> dict:
    """What generated code depends on besides the model: torch, and the GPU or the CPU's ISA."""
    if device.type == "cuda":
        index = device_index(device)
        return {"torch": torch.__version__, "device": torch.cuda.get_device_name(index),
                "capability": list(torch.cuda.get_device_capability(index))}
    return {"torch": torch.__version__, "device": f"cpu-{platform.machine()}",
            "capability": torch.backends.cpu.get_cpu_capability()}


def package_key(environment: dict, weights_sha256: str, precision: str, shape: PackageShape, autotune: bool) -> str:
    fields = {"format": PACKAGE_FORMAT, "environment": environment, "weights_sha256": weights_sha256,
              "precision": precision, "shape": shape.to_json(), "autotune": bool(autotune)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def aoti_cache(cache_root: str | Path) -> EngineCache:
    """``<cache_root>/aoti``: packages beside the TensorRT engines, in the same layout."""
    return EngineCache(Path(cache_root) / "aoti", suffix=".pt2")


def package_label(model: LoadedModel, scale: int, precision: str) -> str:
    return f"{model.name}-x{scale}-{precision}"


# --- building ------------------------------------------------------------------------------------

def package_module(model: LoadedModel, scale: int, precision: str) -> torch.nn.Module:
    """The network as exported: fp32 inputs and output, ``precision`` inside."""
    module = SRGraph(model.net(scale)).eval()
    return HalfPrecision(module, DTYPES[precision]).eval() if precision in DTYPES else module


def _dim(name: str, low: int, high: int, align: int):
    """A dynamic dimension in [low, high], a multiple of ``align`` when it is above 1 (RRDBNet's
    pixel-unshuffle: torch.export proves nothing about odd sizes otherwise)."""
    Dim = torch.export.Dim
    if align == 1:
        return Dim(name, min=low, max=max(high, low + 1))
    return align * Dim(name, min=low // align, max=max(high // align, low // align + 1))


def dynamic_shapes(model: LoadedModel, shape: PackageShape) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=max(2, shape.max_batch))
    image = {0: batch, 2: _dim("height", shape.min_side, shape.max_side, shape.align),
             3: _dim("width", shape.min_side, shape.max_side, shape.align)}
    return (image, {0: batch}) if model.needs_degradation else (image,)


def example_inputs(model: LoadedModel, scale: int, shape: PackageShape, device: torch.device) -> tuple:
    """The traced inputs; their sizes are Inductor's hints for autotuning (a full window)."""
    batch = min(max(2, shape.max_batch), DEFAULT_MAX_BATCH)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, shape.max_side, shape.max_side, generator=g).to(device)
    if not model.needs_degradation:
        return (image,)
    with torch.inference_mode():
        degradation = model.net(scale).estimate_degradation(image[:, :, :64, :64])
    return image, degradation.clone()


def compile_package(module: torch.nn.Module, inputs: tuple, dynamic: tuple, *, autotune: bool) -> bytes:
    """The ``.pt2`` bytes of ``module`` exported with ``dynamic`` shapes and compiled by Inductor."""
    configs = {"max_autotune": True} if autotune else {}
    with tempfile.TemporaryDirectory(prefix="srserve-aoti-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's deprecation chatter; failures raise
        with torch.no_grad():
            exported = torch.export.export(module, inputs, dynamic_shapes=dynamic)
        path = torch._inductor.aoti_compile_and_package(exported, package_path=str(Path(tmp) / "model.pt2"),
                                                        inductor_configs=configs)
        return Path(path).read_bytes()


def load_package(blob: bytes, device: torch.device):
    """The loaded package on ``device``; None when this torch/device rejects it (stale, corrupt)."""
    index = device_index(device) if device.type == "cuda" else -1
    try:
        return torch._inductor.aoti_load_package(io.BytesIO(blob), device_index=index)
    except (RuntimeError, ValueError, OSError) as exc:
        log.warning("cannot load an AOTInductor package (%s); it will be rebuilt", str(exc).splitlines()[0][:200])
        return None


class PackageRunner:
    """A loaded package: ``runner(image[, degradation])`` -> N×3×sH×sW float32 on the device."""

    def __init__(self, compiled, shape: PackageShape, device: torch.device):
        self.compiled = compiled
        self.shape = shape
        self.device = device

    def __call__(self, image: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (image,) if degradation is None else (image, degradation)
        return self.compiled(*(t.to(self.device, torch.float32).contiguous() for t in inputs))


def load_compiled(model: LoadedModel, scale: int, precision: str, *, cache: EngineCache, device: torch.device,
                  max_side: int, max_batch: int = DEFAULT_MAX_BATCH, autotune: bool | None = None
                  ) -> tuple[PackageRunner, dict]:
    """The cached package of ``model`` at ``scale``/``precision`` for windows up to ``max_side``
    and batches up to ``max_batch`` on ``device``, built and parity-checked when missing."""
    if precision not in AOTI_PRECISIONS:
        raise ExportError(f"compiled packages are {', '.join(AOTI_PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    autotune = device.type == "cuda" if autotune is None else bool(autotune)
    shape = package_shape(model, scale, max_side, max_batch)
    environment = compile_environment(device)
    weights = weights_identity(model, scale)
    key = package_key(environment, weights, precision, shape, autotune)
    record = PackageRecord(key=key, label=package_label(model, scale, precision), weights_sha256=weights,
                           precision=precision, shape=shape.to_json(), autotune=autotune, environment=environment)

    def load(blob: bytes):
        return load_package(blob, device)

    def build() -> tuple[bytes, dict]:
        log.warning("compiling %s (%s) with AOTInductor%s; this takes minutes once, then it is cached in %s",
                    record.label, key[:12], " and max-autotune" if autotune else "", cache.root)
        try:
            blob = compile_package(package_module(model, scale, precision),
                                   example_inputs(model, scale, shape, device), dynamic_shapes(model, shape),
                                   autotune=autotune)
        except Exception as exc:  # export and Inductor raise many types; the user gets one line
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ExportError(f"cannot compile {record.label}: {type(exc).__name__}: {first_line}") from exc
        compiled = load(blob)
        if compiled is None:
            raise ExportError(f"AOTInductor built {record.label} but cannot load it")
        parity = check_package(model, scale, precision, PackageRunner(compiled, shape, device), shape)
        return blob, parity

    compiled, built = cache.get_or_build(record.label, record, build, load)
    info = {"package": str(cache.plan_path(record.label, key)), "built_now": built, "key": key,
            "shape": shape.to_json(), "autotune": autotune}
    return PackageRunner(compiled, shape, device), info


def check_package(model: LoadedModel, scale: int, precision: str, runner: PackageRunner, shape: PackageShape) -> dict:
    """Parity with PyTorch at the full window (``onnx_export.check_parity_with``); raises if it fails."""
    from .onnx_export import GraphJob, summarize_parity, check_parity_with

    job = GraphJob("sr", scale, "fp32" if precision == "fp32" else "fp16")
    names = ["image", "degradation"] if model.needs_degradation else ["image"]
    parity = check_parity_with(model, job, lambda feeds: runner(*(feeds[n] for n in names)).float().cpu(),
                               shape.max_side, batch=min(3, shape.max_batch))
    if not parity["passed"]:
        raise ExportError(f"compiled {package_label(model, scale, precision)} failed its parity check: "
                          f"{summarize_parity(parity)}")
    return parity
