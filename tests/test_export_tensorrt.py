"""TensorRT: the engine cache key, profiles from the tile configuration, the cache's refusal to use
a stale engine (all without tensorrt), and a real build on a GPU (skipped without one)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from export_nets import exported_repository, tiny_repository
from srserve.export.tensorrt import (EngineCache, EngineEnvironment, EngineProfile, EngineRecord, ShapeRange,
                                     engine_cache_key, profile_for_window, tile_window)
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


def test_timing_cache_is_per_gpu_and_version(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.timing_cache_path(ENV) != cache.timing_cache_path(dataclasses.replace(ENV, tensorrt_version="10.14"))
    assert cache.timing_cache_path(ENV).parent == tmp_path


needs_tensorrt = pytest.mark.skipif(
    not torch.cuda.is_available() or __import__("importlib").util.find_spec("tensorrt") is None,
    reason="needs a CUDA GPU and tensorrt")


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_builds_caches_and_matches_pytorch(tmp_path, precision):
    from srserve.export.backends import create_backend
    from srserve.pipeline import upscale_tensor

    repo = exported_repository()
    backend = create_backend("edsr", "tensorrt", repository=repo.root, device="cuda", precision=precision,
                             cache_dir=tmp_path, tile=32, force_precision=True)
    info = backend.describe()["engines"]["2"]
    assert info["built_now"]
    x = torch.rand(1, 3, 70, 50)
    reference = create_backend("edsr", "torch", repository=repo.root, device="cuda")
    got = upscale_tensor(backend, x, 2, tile=32, batch_size=4)
    want = upscale_tensor(reference, x, 2, tile=32, batch_size=4)
    limit = 1 if precision == "fp32" else 8
    assert int(((got - want).abs() * 255).round().max()) <= limit
    again = create_backend("edsr", "tensorrt", repository=repo.root, device="cuda", precision=precision,
                           cache_dir=tmp_path, tile=32, force_precision=True)
    assert not again.describe()["engines"]["2"]["built_now"]
