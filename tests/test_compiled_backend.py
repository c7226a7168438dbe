"""The compiled engine: its routing (buckets, chunks, package vs PyTorch), the fp32 fallback, the
``auto`` order on CUDA (availability faked), and a real AOTInductor package built on the CPU by
``srserve export --format aoti``, loaded from the cache without recompiling."""
from __future__ import annotations

import json

import pytest
import torch

from export_nets import exported_repository, tiny_repository
from srserve import backends
from srserve.backends import BackendError, create_backend
from srserve.backends.compiled_backend import CompiledBackend, batch_buckets, bucket_for
from srserve.backends.cuda import compile_toolchain_missing, tile_window
from srserve.export.aoti import PackageShape, package_key, package_shape
from srserve.pipeline import upscale_tensor


class EagerPackages:
    """An ``ArtifactBuilder`` whose packages are the eager networks: the compile step stubbed, the
    engine's own logic real. Records every call's input shape."""

    def __init__(self, corrupt: bool = False):
        self.calls: list[tuple] = []
        self.corrupt = corrupt

    def compiled_package(self, model, scale, precision, *, cache_root, device, max_side, max_batch, autotune=None):
        net = model.net(scale)

        def runner(image, degradation=None):
            self.calls.append(tuple(image.shape))
            out = net(image, degradation)
            return out + float("nan") if self.corrupt else out

        runner.shape = package_shape(model, scale, max_side, max_batch)
        return runner, {"package": "eager stand-in", "built_now": False}


@pytest.fixture(scope="module")
def repo():
    return exported_repository()


def compiled(repo, name: str, builder, **options) -> CompiledBackend:
    return create_backend(name, "compiled", repository=repo.root, device="cpu", builder=builder, **options)


@pytest.mark.parametrize("name", ["edsr", "rrdb", "dasr"])
def test_compiled_equals_torch_through_the_tiled_pipeline(repo, name):
    builder = EagerPackages()
    backend = compiled(repo, name, builder, tile=12, max_batch=4)
    reference = create_backend(name, "torch", repository=repo.root)
    x = torch.rand(1, 3, 30, 22, generator=torch.Generator().manual_seed(1))
    for scale in backend.model.scales:
        got = upscale_tensor(backend, x, scale, tile=12, batch_size=3)
        want = upscale_tensor(reference, x, scale, tile=12, batch_size=3)
        assert float((got - want).abs().max()) < 1e-5
    info = backend.describe()
    assert info["backend"] == "compiled" and info["batches"]["package"] > 0 and info["batches"]["eager"] == 0
    assert info["cuda_graphs"] == [] and info["cuda_graphs_note"] == "off"  # graphs are CUDA-only
    assert all(n <= 4 for n, *_ in builder.calls)


def test_large_batches_are_split_and_uncovered_shapes_run_in_pytorch(repo):
    builder = EagerPackages()
    backend = compiled(repo, "rrdb", builder, tile=12, max_batch=2)  # x2: pixel-unshuffle, alignment 2
    window = backend.windows[2][0]
    assert backend.runners[2].shape == PackageShape(2, window, 2, 8)
    backend.run(torch.rand(5, 3, window, window), 2)
    assert [c[0] for c in builder.calls] == [2, 2, 1]
    builder.calls.clear()
    for side in (window + 2, window - 1, 6):  # larger than the package, odd under alignment 2, too small
        x = torch.rand(1, 3, side, side)
        with torch.inference_mode():
            want = backend.model.net(2)(x)
        assert float((backend.run(x, 2) - want).abs().max()) < 1e-5
    assert builder.calls == [] and backend.describe()["batches"]["eager"] == 3


def test_batches_take_the_graph_of_their_bucket_and_window(repo):
    """The CUDA graphs' routing, with stand-ins for the graphs (capturing needs a GPU)."""
    backend = compiled(repo, "edsr", EagerPackages(), tile=12, max_batch=8)
    window = backend.windows[2][0]
    used = []

    def graph(bucket):
        return lambda image: used.append((bucket, image.shape[0])) or torch.zeros(image.shape[0], 3, 2 * window,
                                                                                 2 * window)

    backend.graphs = {(2, b, window): graph(b) for b in backend.buckets}
    backend.run(torch.rand(3, 3, window, window), 2)
    backend.run(torch.rand(8, 3, window, window), 2)
    backend.run(torch.rand(2, 3, window, window - 2), 2)  # not a captured window: the package
    assert used == [(4, 3), (8, 8)]
    assert backend.describe()["batches"] == {"graph": 2, "package": 1, "eager": 0}
    assert backend.describe()["cuda_graphs"] == [f"{b}x{window}" for b in (1, 2, 4, 8)]


def test_buckets_are_powers_of_two_then_the_max_batch():
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(1) == [1]
    assert [bucket_for(n, batch_buckets(32)) for n in (1, 3, 5, 16, 17, 32)] == [1, 4, 8, 16, 32, 32]


def test_non_finite_reduced_precision_output_is_run_again_in_fp32(repo):
    backend = compiled(repo, "edsr", EagerPackages(corrupt=True), precision="fp16", force_precision=True)
    assert backend.precision == "fp16"
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        want = backend.model.net(2)(x)
    out = backend.run(x, 2)
    assert torch.isfinite(out).all() and float((out - want).abs().max()) < 1e-5
    assert backend.fp16_fallbacks == 1


def test_compiled_engine_errors_are_one_line(repo):
    with pytest.raises(BackendError, match="built by srserve.export"):
        create_backend("edsr", "compiled", repository=repo.root, device="cpu")
    backend = compiled(repo, "edsr", EagerPackages())
    with pytest.raises(Exception, match="serves scales"):
        backend.run(torch.rand(1, 3, 8, 8), 4)


def test_package_key_follows_everything_the_code_depends_on():
    env = {"torch": "2.13.0", "device": "NVIDIA H200", "capability": [9, 0]}
    shape = PackageShape(8, 160, 1, 8)
    base = package_key(env, "w" * 64, "fp16", shape, True)
    assert base == package_key(dict(env), "w" * 64, "fp16", PackageShape(8, 160, 1, 8), True)
    changed = [package_key({**env, "torch": "2.11.0"}, "w" * 64, "fp16", shape, True),
               package_key({**env, "device": "NVIDIA A100"}, "w" * 64, "fp16", shape, True),
               package_key(env, "v" * 64, "fp16", shape, True),
               package_key(env, "w" * 64, "bf16", shape, True),
               package_key(env, "w" * 64, "fp16", PackageShape(16, 160, 1, 8), True),
               package_key(env, "w" * 64, "fp16", PackageShape(8, 192, 1, 8), True),
               package_key(env, "w" * 64, "fp16", shape, False)]
    assert len({base, *changed}) == 1 + len(changed)


# --- auto on CUDA, availability faked ---------------------------------------------------------------

@pytest.fixture
def fake_cuda(monkeypatch):
    """What auto sees on a GPU machine: set each part with ``fake_cuda(...)``."""
    from srserve.backends import onnxruntime_backend

    def setup(tensorrt=False, toolchain="", ort_gpu=False):
        monkeypatch.setattr(backends, "tensorrt_available", lambda: tensorrt)
        monkeypatch.setattr(backends, "compile_toolchain_missing", lambda device_type="cuda": toolchain)
        monkeypatch.setattr(onnxruntime_backend, "has_gpu_provider", lambda: ort_gpu)

    return setup


def names(candidates):
    return [name for name, _ in candidates]


def test_auto_on_cuda_prefers_tensorrt_then_compiled_then_onnxruntime_then_torch(repo, tmp_path, fake_cuda):
    cuda = torch.device("cuda")
    model = repo.load("edsr")  # fp32 ONNX graphs present
    fake_cuda(tensorrt=True, ort_gpu=True)
    assert names(backends.auto_candidates(model, cuda, tmp_path)) == ["tensorrt", "compiled", "onnxruntime", "torch"]
    fake_cuda(tensorrt=False, ort_gpu=True)
    candidates = backends.auto_candidates(model, cuda, tmp_path)
    assert names(candidates) == ["compiled", "onnxruntime", "torch"]
    assert candidates[0][1] == "CUDA, TensorRT not installed; TorchInductor packages with CUDA graphs"
    assert backends.choose_backend(model, cuda, tmp_path)[0] == "compiled"
    fake_cuda(tensorrt=False, toolchain="triton", ort_gpu=True)
    assert names(backends.auto_candidates(model, cuda, tmp_path)) == ["onnxruntime", "torch"]
    fake_cuda(tensorrt=False, toolchain="triton", ort_gpu=False)
    assert backends.auto_candidates(model, cuda, tmp_path) == [
        ("torch", "CUDA, the compiled engine lacks triton; no onnxruntime-gpu")]


def test_auto_on_cuda_without_onnx_graphs_still_compiles(tmp_path, fake_cuda):
    bare = tiny_repository(tmp_path / "bare", names=("edsr",)).load("edsr")
    fake_cuda(tensorrt=True, ort_gpu=True)  # TensorRT and onnxruntime need the graphs
    assert names(backends.auto_candidates(bare, torch.device("cuda"), tmp_path / "c")) == ["compiled", "torch"]
    fake_cuda(tensorrt=False, toolchain="a C++ compiler")
    assert backends.auto_candidates(bare, torch.device("cuda"), tmp_path / "c")[0] == (
        "torch", "CUDA, the compiled engine lacks a C++ compiler; no usable fp32 ONNX graph for x2")


def test_auto_takes_the_next_candidate_when_one_cannot_be_created(repo, tmp_path, monkeypatch):
    create = backends._create

    def graph_engines_broken(name, *args, **kwargs):
        if name in ("openvino", "onnxruntime"):
            raise BackendError(f"{name} refused")
        return create(name, *args, **kwargs)

    monkeypatch.setattr(backends, "_create", graph_engines_broken)
    backend = create_backend("edsr", repository=repo.root, cache_dir=tmp_path)
    assert backend.name == "torch"
    selected = backend.describe()["selected"]
    assert "onnxruntime failed: onnxruntime refused" in selected and "openvino failed: openvino refused" in selected


def test_toolchain_check_names_what_is_missing(monkeypatch):
    import importlib.util
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert compile_toolchain_missing("cuda") == "triton and a C++ compiler"
    assert compile_toolchain_missing("cpu") == "a C++ compiler"


# --- a real package, compiled on the CPU --------------------------------------------------------------

@pytest.mark.slow
def test_cli_builds_a_package_the_engine_then_loads_without_compiling(tmp_path, capsys, monkeypatch):
    """``srserve export --format aoti`` compiles (AOTInductor's C++ path: ~1 min on 2 cores), checks
    and caches a package; the engine created afterwards loads it and matches PyTorch."""
    from srserve.cli import main
    from srserve.export import ExportBuilder, aoti

    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    cache = tmp_path / "cache"
    rc = main(["export", "--repository", str(repo.root), "--model", "edsr", "--format", "aoti", "--device", "cpu",
               "--tile", "12", "--max-batch", "4", "--cache-dir", str(cache), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 graph(s) written, 0 engine(s) ready, 1 package(s) ready, 0 failed" in out
    (package,) = (cache / "aoti").glob("edsr-x2-fp32-*.pt2")
    record = json.loads(package.with_suffix(".json").read_text())
    assert record["parity"]["passed"] and record["parity"]["random"]["max_levels"] <= 1
    assert record["shape"]["max_side"] == tile_window(repo.load("edsr"), 2, 12) and record["shape"]["max_batch"] == 4

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(aoti, "compile_package", no_compile)
    backend = create_backend("edsr", "compiled", repository=repo.root, device="cpu", tile=12, max_batch=4,
                             cache_dir=cache, builder=ExportBuilder())
    assert backend.describe()["packages"]["2"]["built_now"] is False
    x = torch.rand(1, 3, 30, 22, generator=torch.Generator().manual_seed(3))
    got = upscale_tensor(backend, x, 2, tile=12, batch_size=3)
    want = upscale_tensor(create_backend("edsr", "torch", repository=repo.root), x, 2, tile=12, batch_size=3)
    assert float((got - want).abs().max()) < 1e-4
    assert backend.describe()["batches"]["package"] > 0 and backend.describe()["batches"]["eager"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_replay_the_package(tmp_path):
    from srserve.export import ExportBuilder

    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    backend = create_backend("edsr", "compiled", repository=repo.root, device="cuda", tile=16, max_batch=4,
                             cache_dir=tmp_path / "cache", builder=ExportBuilder())
    info = backend.describe()
    assert info["cuda_graphs"], info["cuda_graphs_note"]
    window = backend.windows[2][0]
    x = torch.rand(3, 3, window, window, device="cuda")
    with torch.inference_mode():
        want = backend.model.net(2)(x)
    first = backend.run(x, 2)
    second = backend.run(x[:1], 2)  # a smaller bucket, then the first again: outputs are copies
    assert float((first - want).abs().max()) * 255 <= 1 and float((second - want[:1]).abs().max()) * 255 <= 1
    assert backend.describe()["batches"]["graph"] == 2
