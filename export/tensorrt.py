"""TensorRT 10 engines from the exported ONNX, cached so a server start never rebuilds one twice.

An engine is only valid for the GPU model, the TensorRT version, the exact ONNX file, the
precision flags and the optimization profile it was built with, so those are its cache key
(``engine_cache_key``, a pure function). Engines live in a cache directory (a volume in the GPU
container) as ``<label>-<key>.plan`` with a ``.json`` record of the key's inputs; a lookup
recomputes the key from the current environment, so an engine built for another GPU, another
TensorRT or an older ONNX is never found, and one whose record or deserialisation disagrees is
rebuilt, never used. Builds share a per-GPU timing cache and take a file lock, so concurrent
workers build an engine once.

The optimization profile comes from the tile configuration (``profile_for_window``): the
pipeline feeds windows of at most ``tile + 2·margin`` pixels, so that is the profile's
optimum and maximum; batches run up to ``max_batch`` tiles.

Everything that needs ``tensorrt`` imports it lazily: this module imports (and its pure parts
are tested) without it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .artifacts import ExportError

ENGINE_FORMAT = "srserve-engine/1"
ENGINE_PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_WORKSPACE = 4 << 30
DEFAULT_MAX_BATCH = 8


class EngineError(ExportError):
    """TensorRT is missing, cannot parse/build, or an engine cannot run (one line)."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError("tensorrt is not installed (TensorRT 10 comes with the GPU image, see docker/requirements-gpu.txt)") from None
    major = int(tensorrt.__version__.split(".")[0])
    if major < 10:
        raise EngineError(f"TensorRT {tensorrt.__version__} is too old; srserve uses the TensorRT 10 API")
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except EngineError:
        return False
    return torch.cuda.is_available()


# --- what an engine is keyed by (pure) ---------------------------------------------------------

@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EngineProfile:
    """One optimization profile: a shape range per input (name -> ShapeRange)."""

    shapes: tuple[tuple[str, ShapeRange], ...]

    def to_json(self) -> dict:
        return {name: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for name, r in self.shapes}

    def accepts(self, name: str, shape: tuple[int, ...]) -> bool:
        for n, r in self.shapes:
            if n == name:
                return len(shape) == len(r.min) and all(lo <= s <= hi for lo, s, hi in zip(r.min, shape, r.max))
        return False


@dataclass(frozen=True)
class EngineEnvironment:
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str


def engine_cache_key(env: EngineEnvironment, onnx_sha256: str, precision: str, profile: EngineProfile, *,
                     tf32: bool = True) -> str:
    """Hex key of everything an engine depends on; any change gives another key."""
    fields = {"format": ENGINE_FORMAT, "gpu": env.gpu_name, "cc": list(env.compute_capability),
              "tensorrt": env.tensorrt_version, "onnx_sha256": onnx_sha256, "precision": precision,
              "tf32": bool(tf32), "profile": profile.to_json()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def profile_for_window(inputs: list[dict], *, window: int | None, max_batch: int = DEFAULT_MAX_BATCH,
                       opt_batch: int | None = None, min_side: int = 8) -> EngineProfile:
    """The profile for an exported graph's inputs (``Artifact.inputs``) fed tiles of at most
    ``window`` pixels: static dimensions stay fixed, height/width range over
    [``min_side``, ``window``] with the optimum at ``window``, batch over [1, ``max_batch``]."""
    opt_batch = max(1, min(opt_batch or max_batch, max_batch))
    shapes = []
    for io in inputs:
        lo, opt, hi = [], [], []
        for axis, dim in enumerate(io["shape"]):
            if isinstance(dim, int):
                lo.append(dim), opt.append(dim), hi.append(dim)
            elif axis == 0:
                lo.append(1), opt.append(opt_batch), hi.append(max_batch)
            else:
                if not window:
                    raise EngineError(f"input {io['name']} has a dynamic {dim}: a tile window is needed for the profile")
                lo.append(min(min_side, window)), opt.append(window), hi.append(window)
        shapes.append((io["name"], ShapeRange(tuple(lo), tuple(opt), tuple(hi))))
    return EngineProfile(tuple(shapes))


def tile_window(model, scale: int, tile: int | None = None) -> int:
    """The largest window the pipeline feeds for ``model`` at ``scale`` with core ``tile`` (the
    model's default tile when None): ``tile + 2·margin``, rounded to the tile alignment."""
    from srserve.pipeline.tiling import default_tiling, plan_tiles

    cfg = default_tiling(model, scale)
    core = cfg.tile_size if tile is None else int(tile)
    big = 4 * (core + 2 * cfg.margin)
    plan = plan_tiles(big, big, scale, core, cfg.margin, feather=cfg.feather, align=cfg.align)
    return int(plan.tile_shape[0])


def current_environment(device: torch.device | str = "cuda") -> EngineEnvironment:
    trt = import_tensorrt()
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return EngineEnvironment(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)),
                             trt.__version__)


# --- the cache -----------------------------------------------------------------------------------

@dataclass
class EngineRecord:
    """The ``.json`` beside a plan: the key's inputs, so a lookup can verify them."""

    key: str
    label: str
    onnx_sha256: str
    precision: str
    tf32: bool
    profile: dict
    environment: dict
    build_seconds: float = 0.0
    created: str = ""
    parity: dict = field(default_factory=dict)


class EngineCache:
    """``root/<label>-<key>.plan`` + ``.json``; ``root/timing-<gpu>-<trt>.cache``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def plan_path(self, label: str, key: str) -> Path:
        return self.root / f"{label}-{key}.plan"

    def timing_cache_path(self, env: EngineEnvironment) -> Path:
        gpu = "".join(c if c.isalnum() else "_" for c in env.gpu_name)
        return self.root / f"timing-{gpu}-sm{env.compute_capability[0]}{env.compute_capability[1]}-trt{env.tensorrt_version}.cache"

    def lookup(self, label: str, record: EngineRecord, load: Callable[[bytes], object]) -> object | None:
        """The loaded engine if a plan with this key exists, its record matches and it loads."""
        plan = self.plan_path(label, record.key)
        meta = plan.with_suffix(".json")
        if not plan.is_file() or not meta.is_file():
            return None
        try:
            stored = json.loads(meta.read_text())
        except ValueError:
            return None
        wanted = {k: v for k, v in asdict(record).items() if k not in ("build_seconds", "created", "parity")}
        if any(stored.get(k) != v for k, v in wanted.items()):
            return None  # stale or foreign: rebuilt by the caller, never used
        return load(plan.read_bytes())  # None when TensorRT rejects it

    def store(self, label: str, record: EngineRecord, engine: bytes) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        plan = self.plan_path(label, record.key)
        _atomic_write(plan, engine)
        record.created = record.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _atomic_write(plan.with_suffix(".json"), (json.dumps(asdict(record), indent=2) + "\n").encode())
        return plan

    @contextlib.contextmanager
    def building(self, label: str, key: str):
        """An exclusive lock per engine, so concurrent processes build it once."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / f"{label}-{key}.lock"
        with open(lock, "w") as f:
            try:
                import fcntl

                fcntl.flock(f, fcntl.LOCK_EX)
            except ImportError:  # not POSIX: no cross-process lock
                pass
            yield

    def get_or_build(self, label: str, record: EngineRecord, build: Callable[[], tuple[bytes, dict]],
                     load: Callable[[bytes], object]) -> tuple[object, bool]:
        """(engine, built): the cached engine, else ``build()`` -> (plan bytes, parity), stored."""
        engine = self.lookup(label, record, load)
        if engine is not None:
            return engine, False
        with self.building(label, record.key):
            engine = self.lookup(label, record, load)  # another process may have built it meanwhile
            if engine is not None:
                return engine, False
            start = time.perf_counter()
            plan, parity = build()
            record.build_seconds = round(time.perf_counter() - start, 1)
            record.parity = parity
            engine = load(plan)
            if engine is None:
                raise EngineError(f"TensorRT built {label} but cannot load it")
            self.store(label, record, plan)
            return engine, True


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --- building and running (need tensorrt and a GPU) ------------------------------------------------

def _logger():
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def build_engine(onnx_path: str | os.PathLike, precision: str, profile: EngineProfile, *, tf32: bool = True,
                 workspace: int = DEFAULT_WORKSPACE, timing_cache: Path | None = None) -> bytes:
    """Serialized engine of ``onnx_path``; updates ``timing_cache`` (a file) when given."""
    if precision not in ENGINE_PRECISIONS:
        raise EngineError(f"TensorRT precision must be one of {', '.join(ENGINE_PRECISIONS)}, not {precision!r}")
    trt = import_tensorrt()
    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    optimization = builder.create_optimization_profile()
    for name, r in profile.shapes:
        optimization.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(optimization)
    blob = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from {Path(onnx_path).name} ({precision})")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


@dataclass
class LoadedEngine:
    """A deserialized ``ICudaEngine`` with the runtime that must outlive it."""

    runtime: object
    engine: object


def deserialize_engine(plan: bytes) -> LoadedEngine | None:
    """None when this TensorRT/GPU rejects the plan (stale or corrupt): the caller rebuilds."""
    trt = import_tensorrt()
    runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(plan)
    return None if engine is None else LoadedEngine(runtime, engine)


class TensorRTRunner:
    """One engine and its execution context, fed and read with CUDA torch tensors."""

    def __init__(self, loaded: LoadedEngine, device: torch.device):
        trt = import_tensorrt()
        self.loaded = loaded
        engine = loaded.engine
        self.device = torch.device(device)
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        for name in names:
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise EngineError(f"engine tensor {name} is {engine.get_tensor_dtype(name)}, expected float32")

    def __call__(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        stream = torch.cuda.current_stream(self.device)
        held = []
        for name in self.inputs:
            t = feeds[name].to(self.device, torch.float32).contiguous()
            held.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise EngineError(f"shape {tuple(t.shape)} of {name} is outside the engine's profile")
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        return outputs  # ordered on torch's current stream; inputs are freed stream-ordered too
