"""TensorRT: the engine cache key, profiles from the tile configuration, the cache's refusal to use
a stale engine, the TensorRT 10 call sequence of building and running against a recording stand-in
for the ``tensorrt`` module (all without tensorrt or a GPU), and a real build on a GPU (skipped
without one)."""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch

import srserve.export.tensorrt as trt_module
from export_nets import exported_repository, tiny_repository
from srserve.export.tensorrt import (EngineCache, EngineEnvironment, EngineError, EngineProfile, EngineRecord,
                                     ShapeRange, TensorRTRunner, build_engine, current_environment,
                                     deserialize_engine, engine_cache_key, profile_for_window)
from srserve.backends.cuda import tile_window
from srserve.pipeline.tiling import default_tiling

ENV = EngineEnvironment("NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35")
PROFILE = EngineProfile((("image", ShapeRange((1, 3, 8, 8), (8, 3, 192, 192), (8, 3, 192, 192))),))
SHA = "a" * 64


def key(**changes) -> str:
    args = {"env": ENV, "onnx_sha256": SHA, "precision": "fp16", "profile": PROFILE, "tf32": True, **changes}
    return engine_cache_key(args["env"], args["onnx_sha256"], args["precision"], args["profile"], tf32=args["tf32"])


@pytest.mark.parametrize("change", [
    {"env": dataclasses.replace(ENV, gpu_name="NVIDIA A100-SXM4-80GB")},
    {"env": dataclasses.replace(ENV, compute_capability=(8, 0))},
    {"env": dataclasses.replace(ENV, tensorrt_version="10.14.1")},
    {"onnx_sha256": "b" * 64},
    {"precision": "fp32"},
    {"precision": "bf16"},
    {"tf32": False},
    {"profile": EngineProfile((("image", ShapeRange((1, 3, 8, 8), (4, 3, 192, 192), (8, 3, 192, 192))),))},
    {"profile": EngineProfile((("image", ShapeRange((1, 3, 8, 8), (8, 3, 192, 192), (8, 3, 256, 256))),))},
], ids=["gpu", "compute-capability", "tensorrt", "onnx", "fp32", "bf16", "tf32", "opt-batch", "max-window"])
def test_engine_cache_key_changes_with_every_input(change):
    assert key(**change) != key()


def test_engine_cache_key_is_stable():
    assert key() == key() and len(key()) == 32
    same = EngineProfile((("image", ShapeRange((1, 3, 8, 8), (8, 3, 192, 192), (8, 3, 192, 192))),))
    assert key(profile=same) == key()


def test_profile_from_tile_window_keeps_static_dims():
    dynamic = [{"name": "image", "shape": ["batch", 3, "height", "width"]},
               {"name": "degradation", "shape": ["batch", 256]}]
    profile = profile_for_window(dynamic, window=100, max_batch=6, opt_batch=4)
    shapes = dict(profile.shapes)
    assert shapes["image"] == ShapeRange((1, 3, 8, 8), (4, 3, 100, 100), (6, 3, 100, 100))
    assert shapes["degradation"] == ShapeRange((1, 256), (4, 256), (6, 256))
    assert profile.accepts("image", (6, 3, 100, 57)) and not profile.accepts("image", (7, 3, 100, 100))
    assert not profile.accepts("image", (1, 3, 101, 100))
    static = profile_for_window([{"name": "image", "shape": ["batch", 3, 40, 40]}], window=None, max_batch=2)
    assert dict(static.shapes)["image"] == ShapeRange((1, 3, 40, 40), (2, 3, 40, 40), (2, 3, 40, 40))


def test_tile_window_is_the_pipelines_largest_window(tmp_path):
    model = tiny_repository(tmp_path, names=("edsr",)).load("edsr")
    cfg = default_tiling(model, 2)
    assert tile_window(model, 2) == cfg.tile_size + 2 * cfg.margin
    assert tile_window(model, 2, tile=64) == 64 + 2 * cfg.margin


def record(**changes) -> EngineRecord:
    fields = {"key": key(), "label": "edsr-x2-fp16", "onnx_sha256": SHA, "precision": "fp16", "tf32": True,
              "profile": PROFILE.to_json(), "environment": {"gpu": ENV.gpu_name}, **changes}
    return EngineRecord(**fields)


class FakeTensorRT:
    """Stands in for building and deserializing: counts builds, refuses plans it marks as rejected."""

    def __init__(self):
        self.builds = 0

    def build(self):
        self.builds += 1
        return f"plan-{self.builds}".encode(), {"passed": True}

    @staticmethod
    def load(plan: bytes):
        return None if plan.startswith(b"rejected") else plan.decode()


def test_cache_builds_once_then_reuses(tmp_path):
    cache, trt = EngineCache(tmp_path), FakeTensorRT()
    engine, built = cache.get_or_build("edsr-x2-fp16", record(), trt.build, trt.load)
    assert (engine, built, trt.builds) == ("plan-1", True, 1)
    engine, built = cache.get_or_build("edsr-x2-fp16", record(), trt.build, trt.load)
    assert (engine, built, trt.builds) == ("plan-1", False, 1)
    meta = json.loads(cache.plan_path("edsr-x2-fp16", key()).with_suffix(".json").read_text())
    assert meta["onnx_sha256"] == SHA and meta["parity"] == {"passed": True}


def test_stale_engine_is_rebuilt_never_used(tmp_path):
    cache, trt = EngineCache(tmp_path), FakeTensorRT()
    cache.get_or_build("edsr-x2-fp16", record(), trt.build, trt.load)
    # a new ONNX gives a new key: the old plan is not even looked at
    new = record(key=key(onnx_sha256="c" * 64), onnx_sha256="c" * 64)
    assert cache.get_or_build("edsr-x2-fp16", new, trt.build, trt.load) == ("plan-2", True)
    # a plan whose record disagrees with its key's inputs (copied/tampered) is rebuilt
    plan = cache.plan_path("edsr-x2-fp16", key())
    meta = json.loads(plan.with_suffix(".json").read_text())
    plan.with_suffix(".json").write_text(json.dumps({**meta, "precision": "fp32"}))
    assert cache.get_or_build("edsr-x2-fp16", record(), trt.build, trt.load) == ("plan-3", True)
    # a plan TensorRT refuses to deserialize (other version/GPU, corrupt) is rebuilt
    plan.write_bytes(b"rejected")
    assert cache.get_or_build("edsr-x2-fp16", record(), trt.build, trt.load) == ("plan-4", True)
    assert plan.read_bytes() == b"plan-4"


def test_timing_cache_is_per_gpu_version_and_tf32(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.timing_cache_path(ENV) != cache.timing_cache_path(dataclasses.replace(ENV, tensorrt_version="10.14"))
    assert cache.timing_cache_path(ENV) != cache.timing_cache_path(ENV, tf32=False)
    assert cache.timing_cache_path(ENV).parent == tmp_path


# --- a recording stand-in for the TensorRT 10 Python API ---------------------------------------------

class Calls(list):
    def names(self) -> list[str]:
        return [c[0] for c in self]


class Enum:
    def __init__(self, kind: str, *members: str):
        for m in members:
            setattr(self, m, f"{kind}.{m}")


class FakeTimingCache:
    def __init__(self, calls: Calls, blob: bytes):
        self.calls, self.entries = calls, [blob] if blob else []

    def combine(self, other, ignore_mismatch):
        self.calls.append(("cache.combine", ignore_mismatch))
        if any(e.startswith(b"other-gpu") for e in self.entries + other.entries):
            return False  # a header mismatch: TensorRT skips the combine
        self.entries += other.entries
        return True

    def serialize(self):
        return b"|".join(self.entries) + b"|built"


class FakeConfig:
    def __init__(self, trt):
        self.trt, self.calls, self.flags, self.cache = trt, trt.calls, set(), None

    def set_memory_pool_limit(self, pool, size):
        self.calls.append(("set_memory_pool_limit", pool, size))

    def set_flag(self, flag):
        self.calls.append(("set_flag", flag))
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.calls.append(("clear_flag", flag))
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.calls.append(("add_optimization_profile", dict(profile.shapes)))
        return 0

    def create_timing_cache(self, blob):
        self.calls.append(("create_timing_cache", bytes(blob)))
        if bytes(blob).startswith(b"corrupt"):
            return None
        return FakeTimingCache(self.calls, bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.calls.append(("set_timing_cache", ignore_mismatch))
        if any(e.startswith(b"other-gpu") for e in cache.entries):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeNetwork:
    def __init__(self, inputs):
        self.inputs = inputs

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return types.SimpleNamespace(name=self.inputs[i])


class FakeEngine:
    """An engine with an ``image`` input and an ``sr`` output twice its spatial size."""

    def __init__(self, trt):
        self.trt = trt

    num_io_tensors = 2

    def get_tensor_name(self, i):
        return ["image", "sr"][i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "image" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.DataType.FLOAT

    def create_execution_context(self):
        self.trt.calls.append(("create_execution_context",))
        return FakeContext(self.trt)


class FakeContext:
    def __init__(self, trt):
        self.trt, self.calls, self.shapes, self.addresses = trt, trt.calls, {}, {}

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        if shape[2] > 32:
            return False  # outside the profile
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n, c, h, w = self.shapes["image"]
        return (n, c, 2 * h, 2 * w)

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name))
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        return True


class FakeTensorRTModule(types.ModuleType):
    """``tensorrt`` 10 as far as srserve uses it; every call lands in ``calls``."""

    def __init__(self, version="10.13.3.9", inputs=("image",), parse_ok=True, build_ok=True, plan_ok=True):
        super().__init__("tensorrt")
        self.__version__, self.calls = version, Calls()
        trt = self

        class Logger:
            WARNING = "Logger.WARNING"

            def __init__(self, severity):
                trt.calls.append(("Logger", severity))

        class Builder:
            def __init__(self, logger):
                trt.calls.append(("Builder",))

            def create_network(self, flags=0):
                trt.calls.append(("create_network", flags))
                return FakeNetwork(list(inputs))

            def create_builder_config(self):
                return FakeConfig(trt)

            def create_optimization_profile(self):
                return FakeProfile()

            def build_serialized_network(self, network, config):
                trt.calls.append(("build_serialized_network", sorted(config.flags)))
                return bytearray(b"plan") if build_ok else None

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                trt.calls.append(("OnnxParser",))

            def parse_from_file(self, path):
                trt.calls.append(("parse_from_file", path))
                return parse_ok

            def get_error(self, i):
                return "In node 3 (importConv): UNSUPPORTED_NODE: no"

        class Runtime:
            def __init__(self, logger):
                trt.calls.append(("Runtime",))

            def deserialize_cuda_engine(self, plan):
                trt.calls.append(("deserialize_cuda_engine", bytes(plan)))
                if not plan_ok:
                    return None
                if bytes(plan) == b"raise":
                    raise RuntimeError("bad plan")
                return FakeEngine(trt)

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime
        self.MemoryPoolType = Enum("MemoryPoolType", "WORKSPACE")
        self.BuilderFlag = Enum("BuilderFlag", "FP16", "BF16", "TF32")
        self.TensorIOMode = Enum("TensorIOMode", "INPUT", "OUTPUT")
        self.DataType = Enum("DataType", "FLOAT", "HALF")


@pytest.fixture
def fake_trt(monkeypatch):
    """Installs a fresh stand-in as ``tensorrt`` (and forgets the cached logger around it)."""
    def install(**kwargs):
        trt = FakeTensorRTModule(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        trt_module._logger.cache_clear()
        return trt

    yield install
    trt_module._logger.cache_clear()


def test_build_follows_the_tensorrt10_sequence(tmp_path, fake_trt):
    trt = fake_trt()
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"earlier")
    plan = build_engine(tmp_path / "x2.fp32.onnx", "fp16", PROFILE, workspace=1 << 20, timing_cache=timing)
    assert plan == b"plan"
    assert trt.calls.names()[:5] == ["Logger", "Builder", "create_network", "OnnxParser", "parse_from_file"]
    assert ("create_network", 0) in trt.calls  # explicit batch is implicit in TensorRT 10
    assert ("parse_from_file", str(tmp_path / "x2.fp32.onnx")) in trt.calls
    assert trt.calls.names().count("Logger") == 1  # one logger for builder and parser
    assert ("set_memory_pool_limit", "MemoryPoolType.WORKSPACE", 1 << 20) in trt.calls
    assert ("add_optimization_profile", {"image": ((1, 3, 8, 8), (8, 3, 192, 192), (8, 3, 192, 192))}) in trt.calls
    assert ("create_timing_cache", b"earlier") in trt.calls and ("set_timing_cache", False) in trt.calls
    assert ("build_serialized_network", ["BuilderFlag.FP16", "BuilderFlag.TF32"]) in trt.calls
    order = trt.calls.names()
    assert order.index("set_timing_cache") < order.index("build_serialized_network") < order.index("cache.combine")
    assert timing.read_bytes() == b"earlier|earlier|built"  # the file's cache, with this build's timings merged in
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("precision, tf32, flags", [
    ("fp32", True, ["BuilderFlag.TF32"]), ("fp32", False, []), ("bf16", True, ["BuilderFlag.BF16", "BuilderFlag.TF32"]),
])
def test_build_precision_flags(tmp_path, fake_trt, precision, tf32, flags):
    trt = fake_trt()
    build_engine(tmp_path / "g.onnx", precision, PROFILE, tf32=tf32)
    assert ("build_serialized_network", flags) in trt.calls
    assert "create_timing_cache" not in trt.calls.names()  # no file: the builder's own cache
    assert (("clear_flag", "BuilderFlag.TF32") in trt.calls) == (not tf32)


def test_build_without_a_precision_flag_is_a_clear_error(tmp_path, fake_trt):
    trt = fake_trt(version="11.0.0")
    del trt.BuilderFlag.FP16
    with pytest.raises(EngineError, match="no BuilderFlag.FP16"):
        build_engine(tmp_path / "g.onnx", "fp16", PROFILE)


@pytest.mark.parametrize("blob", [b"corrupt", b"other-gpu"])
def test_rejected_timing_cache_costs_time_not_the_build(tmp_path, fake_trt, blob):
    trt = fake_trt()
    timing = tmp_path / "timing.cache"
    timing.write_bytes(blob)
    assert build_engine(tmp_path / "g.onnx", "fp32", PROFILE, timing_cache=timing) == b"plan"
    assert ("create_timing_cache", b"") in trt.calls  # started anew
    assert timing.read_bytes() == b"|built"  # replaced by this build's cache


def test_build_errors_are_engine_errors(tmp_path, fake_trt):
    fake_trt(parse_ok=False)
    with pytest.raises(EngineError, match="cannot parse g.onnx: In node 3 .*UNSUPPORTED_NODE"):
        build_engine(tmp_path / "g.onnx", "fp32", PROFILE)
    fake_trt(build_ok=False)
    with pytest.raises(EngineError, match="could not build"):
        build_engine(tmp_path / "g.onnx", "fp32", PROFILE)
    trt = fake_trt(inputs=("image", "degradation"))
    with pytest.raises(EngineError, match="profile covers"):
        build_engine(tmp_path / "g.onnx", "fp32", PROFILE)
    assert "build_serialized_network" not in trt.calls.names()
    with pytest.raises(EngineError, match="precision"):
        build_engine(tmp_path / "g.onnx", "int8", PROFILE)


def test_deserialize_returns_none_for_a_rejected_plan(fake_trt):
    fake_trt(plan_ok=False)
    assert deserialize_engine(b"plan") is None
    fake_trt()
    assert deserialize_engine(b"raise") is None
    loaded = deserialize_engine(bytearray(b"plan"))
    assert isinstance(loaded.engine, FakeEngine) and loaded.runtime is not None


class FakeStream:
    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait_stream", self.cuda_stream, other.cuda_stream))


@pytest.fixture
def fake_streams(monkeypatch):
    """torch's stream calls for a CPU run: the private stream is 7, torch's current one 0."""
    log = Calls()
    monkeypatch.setattr(trt_module, "_new_stream", lambda device: FakeStream(7, log))
    monkeypatch.setattr(trt_module, "_current_stream", lambda device: FakeStream(0, log))
    return log


def test_runner_follows_the_execute_async_v3_sequence(fake_trt, fake_streams):
    trt = fake_trt()
    runner = TensorRTRunner(deserialize_engine(b"plan"), "cpu")
    assert (runner.inputs, runner.outputs) == (["image"], ["sr"])
    batch = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    x = batch[1:3]  # a slice: its address is rarely 256-byte aligned
    trt.calls.clear()
    (out,) = runner({"image": x})
    assert trt.calls.names() == ["set_input_shape", "set_tensor_address", "set_tensor_address", "execute_async_v3"]
    assert ("set_input_shape", "image", (2, 3, 8, 8)) in trt.calls
    assert ("execute_async_v3", 7) in trt.calls  # never the legacy default stream (0)
    assert fake_streams == [("wait_stream", 7, 0), ("wait_stream", 0, 7)]
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert all(ptr % 256 == 0 for ptr in runner.context.addresses.values())
    assert runner.context.addresses["sr"] == out.data_ptr()


def test_aligned_copies_only_misaligned_tensors():
    base = trt_module._empty_aligned((64,), torch.float32, torch.device("cpu"))
    assert base.data_ptr() % 256 == 0 and trt_module._aligned(base) is base
    base.copy_(torch.arange(64.0))
    view = base[3:19]
    moved = trt_module._aligned(view)
    assert moved.data_ptr() % 256 == 0 and moved.data_ptr() != view.data_ptr() and torch.equal(moved, view)


def test_runner_errors(fake_trt, fake_streams):
    fake_trt()
    runner = TensorRTRunner(deserialize_engine(b"plan"), "cpu")
    with pytest.raises(EngineError, match="outside the engine's profile"):
        runner({"image": torch.rand(1, 3, 40, 40)})
    with pytest.raises(EngineError, match="needs inputs"):
        runner({"degradation": torch.rand(1, 256)})


def test_environment_key_follows_gpu_and_tensorrt_version(tmp_path, fake_trt, monkeypatch):
    """The key is made from trt.__version__ and the GPU actually in use: a TensorRT upgrade
    gives a new key, so the old engine is rebuilt, never loaded."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["NVIDIA A10", "NVIDIA H100 80GB HBM3"][i])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(8, 6), (9, 0)][i])
    fake_trt(version="10.13.3.9")
    env = current_environment("cuda")
    assert env == EngineEnvironment("NVIDIA H100 80GB HBM3", (9, 0), "10.13.3.9")
    assert current_environment("cuda:0").gpu_name == "NVIDIA A10"
    fake_trt(version="10.14.1.48")
    upgraded = current_environment("cuda")
    cache, builds = EngineCache(tmp_path), []

    def get(env):
        k = engine_cache_key(env, SHA, "fp16", PROFILE)
        rec = record(key=k, environment={"gpu": env.gpu_name, "tensorrt": env.tensorrt_version})
        return cache.get_or_build("edsr-x2-fp16", rec, lambda: (builds.append(k) or b"plan-" + k.encode(), {}),
                                  lambda plan: plan)

    assert get(env)[1] and not get(env)[1] and get(upgraded)[1]
    assert len(builds) == 2 and builds[0] != builds[1]


def test_ort_tensorrt_ep_engines_are_per_graph_and_gpu(tmp_path):
    """ONNX Runtime's TensorRT EP names engines after the graph's file name and structure only;
    srserve gives each graph sha256 (and GPU model) its own engine folder."""
    from srserve.backends.onnxruntime_backend import tensorrt_ep_options

    profile = {"trt_profile_min_shapes": "image:1x3x8x8", "trt_profile_opt_shapes": "image:8x3x64x64",
               "trt_profile_max_shapes": "image:8x3x64x64"}
    a = tensorrt_ep_options(tmp_path, 1, "NVIDIA L40S", "a" * 64, True, profile)
    assert a["device_id"] == 1 and a["trt_fp16_enable"] is True and a["trt_engine_cache_enable"] is True
    assert a["trt_timing_cache_enable"] is True and a["trt_profile_opt_shapes"] == "image:8x3x64x64"
    assert a["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt" / "NVIDIA_L40S" / ("a" * 16))
    assert a["trt_timing_cache_path"] == str(tmp_path / "ort-tensorrt" / "NVIDIA_L40S")
    retrained = tensorrt_ep_options(tmp_path, 1, "NVIDIA L40S", "b" * 64, True, profile)
    other_gpu = tensorrt_ep_options(tmp_path, 1, "NVIDIA RTX 4090", "a" * 64, True, profile)
    assert len({a["trt_engine_cache_path"], retrained["trt_engine_cache_path"],
                other_gpu["trt_engine_cache_path"]}) == 3


needs_tensorrt = pytest.mark.skipif(
    not torch.cuda.is_available() or __import__("importlib").util.find_spec("tensorrt") is None,
    reason="needs a CUDA GPU and tensorrt")


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_builds_caches_and_matches_pytorch(tmp_path, precision):
    from srserve.backends import create_backend
    from srserve.export import ExportBuilder
    from srserve.pipeline import upscale_tensor

    repo = exported_repository()
    backend = create_backend("edsr", "tensorrt", repository=repo.root, device="cuda", precision=precision,
                             cache_dir=tmp_path, tile=32, force_precision=True,
                             builder=ExportBuilder())
    info = backend.describe()["engines"]["2"]
    assert info["built_now"]
    x = torch.rand(1, 3, 70, 50)
    reference = create_backend("edsr", "torch", repository=repo.root, device="cuda")
    got = upscale_tensor(backend, x, 2, tile=32, batch_size=4)
    want = upscale_tensor(reference, x, 2, tile=32, batch_size=4)
    limit = 1 if precision == "fp32" else 8
    assert int(((got - want).abs() * 255).round().max()) <= limit
    again = create_backend("edsr", "tensorrt", repository=repo.root, device="cuda", precision=precision,
                           cache_dir=tmp_path, tile=32, force_precision=True,
                             builder=ExportBuilder())
    assert not again.describe()["engines"]["2"]["built_now"]
