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
import functools
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from srserve.backends.artifacts import ExportError
from srserve.backends.base import BackendError
from srserve.models.repository import LoadedModel
from srserve.backends.cuda import DEFAULT_MAX_BATCH, TENSORRT_MIN_MAJOR, device_index, gpu_slug, tile_window

log = logging.getLogger("srserve.export")

ENGINE_FORMAT = "srserve-engine/1"
ENGINE_PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_WORKSPACE = 4 << 30
TENSOR_ALIGNMENT = 256  # IExecutionContext::setTensorAddress: "at least 256-byte alignment"


class EngineError(ExportError):
    """TensorRT is missing, cannot parse/build, or an engine cannot run (one line)."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError("tensorrt is not installed (TensorRT 10 comes with the GPU image, see docker/requirements-gpu.txt)") from None
    if int(tensorrt.__version__.split(".")[0]) < TENSORRT_MIN_MAJOR:
        raise EngineError(f"TensorRT {tensorrt.__version__} is too old; srserve uses the TensorRT 10 API")
    return tensorrt


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


def current_environment(device: torch.device | str = "cuda") -> EngineEnvironment:
    trt = import_tensorrt()
    index = device_index(device)
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
    """``root/<label>-<key>.plan`` + ``.json``; ``root/timing-<gpu>-<trt>.cache``. The compiled
    engine's AOTInductor packages use the same cache with ``suffix=".pt2"`` (``export.aoti``)."""

    def __init__(self, root: str | os.PathLike, suffix: str = ".plan"):
        self.root = Path(root)
        self.suffix = suffix

    def plan_path(self, label: str, key: str) -> Path:
        return self.root / f"{label}-{key}{self.suffix}"

    def timing_cache_path(self, env: EngineEnvironment, *, tf32: bool = True) -> Path:
        """Per GPU and TensorRT version; strict-fp32 builds apart, since timings are specific to
        builder flags that change layer implementations such as TF32."""
        cc = f"sm{env.compute_capability[0]}{env.compute_capability[1]}"
        suffix = "" if tf32 else "-notf32"
        return self.root / f"timing-{gpu_slug(env.gpu_name)}-{cc}-trt{env.tensorrt_version}{suffix}.cache"

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

    def building(self, label: str, key: str):
        """An exclusive lock per engine, so concurrent processes build it once."""
        return _file_lock(self.root / f"{label}-{key}.lock")

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


@contextlib.contextmanager
def _file_lock(lock: Path):
    """An exclusive cross-process lock on ``lock`` (created if needed)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no cross-process lock
            pass
        yield


def _atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename through a temporary file of this writer's own: a shared ``.tmp`` name
    lets two writers (the timing cache is shared by every engine build) clobber each other."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- building and running (need tensorrt and a GPU) ------------------------------------------------

@functools.lru_cache(maxsize=1)
def _logger():
    """One logger for every builder and runtime: TensorRT keeps the first as its global logger
    and reports each different one passed later."""
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def _on_device(device) -> contextlib.AbstractContextManager:
    """Makes ``device`` current: an engine is bound to the GPU current when it is built or
    deserialized, and must be enqueued with that GPU current."""
    if device is None or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(torch.device(device))


def build_engine(onnx_path: str | os.PathLike, precision: str, profile: EngineProfile, *, tf32: bool = True,
                 workspace: int = DEFAULT_WORKSPACE, timing_cache: Path | None = None,
                 device: torch.device | str | None = None) -> bytes:
    """Serialized engine of ``onnx_path`` built on ``device`` (default: the current GPU);
    merges what it timed into ``timing_cache`` (a file) when given."""
    if precision not in ENGINE_PRECISIONS:
        raise EngineError(f"TensorRT precision must be one of {', '.join(ENGINE_PRECISIONS)}, not {precision!r}")
    trt = import_tensorrt()
    name = Path(onnx_path).name
    with _on_device(device):
        builder = trt.Builder(_logger())
        network = builder.create_network(0)  # TensorRT 10: always explicit batch (EXPLICIT_BATCH is ignored)
        parser = trt.OnnxParser(network, _logger())
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT cannot parse {name}: {errors or 'no parser error recorded'}")
        _check_profile_inputs(network, profile, name)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
        _set_precision(trt, config, precision, tf32)
        _add_profile(builder, config, profile)
        cache = _attach_timing_cache(config, timing_cache) if timing_cache is not None else None
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"TensorRT could not build an engine from {name} ({precision}); see its log above")
        if cache is not None:
            _save_timing_cache(config, cache, timing_cache)
    return bytes(memoryview(serialized))


def _check_profile_inputs(network, profile: EngineProfile, name: str) -> None:
    """The profile must name exactly the network's inputs: TensorRT otherwise fails late, deep
    in the build, with a message about dynamic inputs."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    named = {n for n, _ in profile.shapes}
    if inputs != named:
        raise EngineError(f"{name} has inputs {sorted(inputs)} but the profile covers {sorted(named)}")


def _set_precision(trt, config, precision: str, tf32: bool) -> None:
    """FP16/BF16 allow reduced-precision kernels in this weakly typed network (TensorRT 10.12
    deprecates this for strong typing; TensorRT 11 removes the flags); TF32 is on by default."""
    flag = {"fp16": "FP16", "bf16": "BF16"}.get(precision)
    if flag is not None:
        if not hasattr(trt.BuilderFlag, flag):
            raise EngineError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (weak typing was removed); "
                              "build fp32 engines or use TensorRT 10")
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)


def _add_profile(builder, config, profile: EngineProfile) -> None:
    optimization = builder.create_optimization_profile()
    for name, r in profile.shapes:
        try:
            optimization.set_shape(name, r.min, r.opt, r.max)
        except RuntimeError as exc:  # the binding raises when min <= opt <= max does not hold
            raise EngineError(f"invalid TensorRT profile for {name}: {exc}") from None
    if config.add_optimization_profile(optimization) < 0:
        raise EngineError(f"TensorRT rejected the optimization profile {profile.to_json()}")


def _timing_cache_from(config, blob: bytes):
    """A timing cache from ``blob``, or None when TensorRT rejects it (corrupt, other version)."""
    try:
        return config.create_timing_cache(blob)
    except (RuntimeError, TypeError, ValueError):
        return None


def _attach_timing_cache(config, path: Path):
    """The cache in ``path`` if TensorRT accepts it for this GPU (``set_timing_cache`` returns
    False on a mismatch), else an empty one: a bad cache costs build time, never the build."""
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        cache = _timing_cache_from(config, blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
        log.warning("TensorRT rejects the timing cache %s (corrupt, or another GPU/version); starting anew", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT cannot create an empty timing cache")
    return cache


def _save_timing_cache(config, cache, path: Path) -> None:
    """Merges ``cache`` into the file under a lock, so concurrent builds of other engines
    (which share the file) add to it instead of overwriting each other's timings."""
    with _file_lock(path.with_name(path.name + ".lock")):
        merged = cache
        if path.is_file():
            stored = _timing_cache_from(config, path.read_bytes())
            if stored is not None and stored.combine(cache, ignore_mismatch=False):
                merged = stored
        _atomic_write(path, bytes(memoryview(merged.serialize())))


@dataclass
class LoadedEngine:
    """A deserialized ``ICudaEngine`` with the runtime that must outlive it."""

    runtime: object
    engine: object


def deserialize_engine(plan: bytes, device: torch.device | str | None = None) -> LoadedEngine | None:
    """The engine on ``device`` (default: the current GPU); None when this TensorRT/GPU rejects
    the plan (stale or corrupt): the caller rebuilds."""
    trt = import_tensorrt()
    with _on_device(device):
        runtime = trt.Runtime(_logger())
        try:
            engine = runtime.deserialize_cuda_engine(plan)
        except (RuntimeError, TypeError, ValueError):
            engine = None
    return None if engine is None else LoadedEngine(runtime, engine)


def _new_stream(device: torch.device):
    return torch.cuda.Stream(device)


def _current_stream(device: torch.device):
    return torch.cuda.current_stream(device)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its address is 256-byte aligned (fresh CUDA allocations are), else an
    aligned copy: a batch slice starts wherever the slice does."""
    if t.data_ptr() % TENSOR_ALIGNMENT == 0:
        return t
    out = _empty_aligned(tuple(t.shape), t.dtype, t.device)
    out.copy_(t)
    return out


def _empty_aligned(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    buf = torch.empty(n + TENSOR_ALIGNMENT // dtype.itemsize, dtype=dtype, device=device)
    offset = (-buf.data_ptr() % TENSOR_ALIGNMENT) // dtype.itemsize
    return buf[offset:offset + n].view(shape)


class TensorRTRunner:
    """One engine and its execution context, fed and read with CUDA torch tensors.

    Runs on a stream of its own, ordered after torch's current stream and before anything
    queued on it later: torch's default stream is CUDA's legacy default stream, on which
    ``execute_async_v3`` adds synchronizations of its own. One call at a time (an execution
    context holds the shapes and addresses of the call being set up)."""

    def __init__(self, loaded: LoadedEngine, device: torch.device):
        trt = import_tensorrt()
        self.loaded = loaded
        engine = loaded.engine
        self.device = torch.device(device)
        self._lock = threading.Lock()
        with _on_device(self.device):
            self.context = engine.create_execution_context()
            self.stream = _new_stream(self.device)
        if self.context is None:
            raise EngineError("TensorRT cannot create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        for name in names:
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise EngineError(f"engine tensor {name} is {engine.get_tensor_dtype(name)}, expected float32")

    def __call__(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise EngineError(f"the engine needs inputs {missing}")
        with self._lock, _on_device(self.device):
            held = [self._bind_input(name, feeds[name]) for name in self.inputs]
            outputs = [self._bind_output(name) for name in self.outputs]
            current = _current_stream(self.device)
            self.stream.wait_stream(current)  # inputs written, output memory free
            ok = self.context.execute_async_v3(self.stream.cuda_stream)
            current.wait_stream(self.stream)  # later work on torch's stream sees the outputs
            del held  # freed on torch's stream, which now waits for the engine
        if not ok:
            raise EngineError("TensorRT execution failed")
        return outputs

    def _bind_input(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        t = _aligned(tensor.to(self.device, torch.float32).contiguous())
        if not self.context.set_input_shape(name, tuple(t.shape)):
            raise EngineError(f"shape {tuple(t.shape)} of {name} is outside the engine's profile")
        if not self.context.set_tensor_address(name, t.data_ptr()):
            raise EngineError(f"TensorRT refuses the address of {name}")
        return t

    def _bind_output(self, name: str) -> torch.Tensor:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise EngineError(f"TensorRT cannot infer the shape of {name} ({shape}) from the inputs")
        out = _empty_aligned(shape, torch.float32, self.device)
        if not self.context.set_tensor_address(name, out.data_ptr()):
            raise EngineError(f"TensorRT refuses the address of {name}")
        return out


# --- what a TensorRT backend loads: a cached engine, built and parity-checked when missing -----

def engine_label(model: LoadedModel, scale: int, precision: str) -> str:
    return f"{model.name}-x{scale}-{precision}"


def load_engine(model: LoadedModel, scale: int, precision: str, *, onnx_path: Path, onnx_sha256: str,
                inputs: list[dict], cache: EngineCache, device: torch.device, tile: int | None = None,
                max_batch: int = DEFAULT_MAX_BATCH, tf32: bool = True) -> tuple[TensorRTRunner, EngineProfile, dict]:
    """The cached engine for this graph/precision/profile on this GPU, built (and checked) if needed."""
    env = current_environment(device)
    profile = profile_for_window(inputs, window=tile_window(model, scale, tile), max_batch=max_batch)
    key = engine_cache_key(env, onnx_sha256, precision, profile, tf32=tf32)
    record = EngineRecord(key=key, label=engine_label(model, scale, precision), onnx_sha256=onnx_sha256,
                          precision=precision, tf32=tf32, profile=profile.to_json(),
                          environment={"gpu": env.gpu_name, "cc": list(env.compute_capability),
                                       "tensorrt": env.tensorrt_version})

    def load(plan: bytes):
        return deserialize_engine(plan, device)

    def build():
        log.warning("building TensorRT engine %s (%s); this takes minutes once, then it is cached in %s",
                    record.label, key[:12], cache.root)
        plan = build_engine(onnx_path, precision, profile, tf32=tf32,
                            timing_cache=cache.timing_cache_path(env, tf32=tf32), device=device)
        loaded = load(plan)
        if loaded is None:
            raise BackendError(f"TensorRT built {record.label} but cannot load it")
        runner = TensorRTRunner(loaded, device)
        from .onnx_export import GraphJob, check_parity_with

        parity = check_parity_with(model, GraphJob("sr", scale, "fp32" if precision == "fp32" else "fp16"),
                                   lambda feeds: runner(feeds)[0].float().cpu(), profile_side(profile),
                                   batch=min(3, max_batch))
        if not parity["passed"]:
            raise BackendError(f"TensorRT engine {record.label} failed its parity check: {parity}")
        return plan, parity

    loaded, built = cache.get_or_build(record.label, record, build, load)
    info = {"engine": str(cache.plan_path(record.label, key)), "built_now": built, "key": key,
            "profile": profile.to_json()}
    return TensorRTRunner(loaded, device), profile, info


def profile_side(profile: EngineProfile) -> int:
    """The largest square side of the image input's profile (used for the parity inputs)."""
    for name, r in profile.shapes:
        if name == "image":
            return min(r.max[2], r.max[3])
    raise BackendError("profile has no image input")
