"""Backends behind one interface: the auto choice, ONNX Runtime = PyTorch through the tiled
pipeline, graphs exported on the fly and never stale, the fp16 -> fp32 fallback on NaN."""
from __future__ import annotations

import pytest
import torch

from export_nets import TINY, exported_repository, make_net, tiny_repository
from srserve.backends import BackendError, PrecisionGuard, TorchBackend, create_backend, resolve_precision
from srserve.backends.onnxruntime_backend import OnnxRuntimeBackend
from srserve.export import ExportBuilder
from srserve.pipeline import upscale_tensor

EXPORT = ExportBuilder()


@pytest.fixture(scope="module")
def repo():
    return exported_repository()


def test_auto_takes_a_graph_engine_when_graphs_exist_else_torch_without_a_builder(repo, tmp_path):
    with_graphs = create_backend("edsr", repository=repo.root, cache_dir=tmp_path)
    assert with_graphs.name == "openvino"  # installed with the serve extra; test_openvino.py fakes the others
    assert with_graphs.describe()["selected"] == "auto: CPU, openvino is the fastest engine installed, ONNX graphs present"
    bare = tiny_repository(tmp_path / "bare", names=("edsr",))
    without = create_backend("edsr", repository=bare.root, cache_dir=tmp_path / "cache")
    assert without.name == "torch" and "no usable fp32 ONNX graph for x2" in without.describe()["selected"]
    assert not (tmp_path / "cache").exists()  # without a builder auto never exports


@pytest.mark.parametrize("name", list(TINY))
def test_onnxruntime_equals_torch_through_the_tiled_pipeline(repo, tmp_path, name):
    ort_backend = create_backend(name, "onnxruntime", repository=repo.root, cache_dir=tmp_path)
    torch_backend = create_backend(name, "torch", repository=repo.root)
    x = torch.rand(1, 3, 30, 22, generator=torch.Generator().manual_seed(1))
    for scale in ort_backend.model.scales:
        got = upscale_tensor(ort_backend, x, scale, tile=12, batch_size=3)
        want = upscale_tensor(torch_backend, x, scale, tile=12, batch_size=3)
        assert got.shape == (1, 3, 30 * scale, 22 * scale)
        assert float((got - want).abs().max()) < 1e-4
    assert ort_backend.describe()["providers"] == ["CPUExecutionProvider"]


def test_dasr_degradation_runs_in_its_own_graph(repo, tmp_path):
    backend = create_backend("dasr", "onnxruntime", repository=repo.root, cache_dir=tmp_path)
    assert "degradation x2 fp32" in backend.describe()["graphs"]
    x = torch.rand(2, 3, 24, 19)
    with torch.inference_mode():
        want = backend.model.net(2).estimate_degradation(x)
    got = backend.degradation(x, 2)
    assert got.shape == (2, 256) and float((got - want).abs().max() / want.abs().max()) < 1e-4


def test_missing_graph_is_exported_once_into_the_cache(tmp_path, monkeypatch):
    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    backend = create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "cache", builder=EXPORT)
    cached = tmp_path / "cache" / "onnx" / "edsr" / "onnx" / "x2.fp32.onnx"
    assert cached.is_file() and backend.describe()["graphs"]["sr x2 fp32"] == str(cached)
    assert not (repo.root / "edsr" / "exports.json").exists()  # the repository is left alone

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(EXPORT, "onnx_graph", no_export)
    create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "cache", builder=EXPORT)
    assert create_backend("edsr", repository=repo.root, cache_dir=tmp_path / "cache").name == "openvino"


def test_without_a_builder_a_missing_graph_is_a_clear_error(tmp_path):
    repo = tiny_repository(tmp_path, names=("edsr",))
    with pytest.raises(BackendError, match="srserve export --model edsr --scales 2"):
        create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "c")


def test_graph_of_old_weights_is_never_run(tmp_path):
    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "cache", builder=EXPORT)
    arch, hparams = TINY["edsr"][0]
    repo.add_weights("edsr", arch, hparams, make_net(arch, hparams, seed=7).state_dict())  # retrained
    backend = create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "cache", builder=EXPORT)
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        want = backend.model.net(2)(x)
    assert float((backend.run(x, 2) - want).abs().max()) < 1e-4


def test_injected_nan_falls_back_to_fp32_onnxruntime(repo, tmp_path, monkeypatch):
    backend = create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path, precision="fp16", builder=EXPORT,
                             force_precision=True)
    assert backend.precision == "fp16" and "sr x2 fp16" in backend.describe()["graphs"]
    x = torch.rand(2, 3, 16, 16)
    first = backend.run(x, 2)
    assert torch.isfinite(first).all() and backend.fp16_fallbacks == 0
    execute = OnnxRuntimeBackend._execute

    def nan_in_fp16(self, kind, scale, precision, feeds, shape):
        out = execute(self, kind, scale, precision, feeds, shape)
        if precision == "fp16":
            out[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(OnnxRuntimeBackend, "_execute", nan_in_fp16)
    out = backend.run(x, 2)
    with torch.inference_mode():
        want = backend.model.net(2)(x)
    assert torch.isfinite(out).all() and float((out - want).abs().max()) < 1e-5  # the fp32 graph's result
    assert backend.fp16_fallbacks == 1 and backend.describe()["fp16_fallbacks"] == 1
    assert "sr x2 fp32" in backend.describe()["graphs"]


def test_injected_inf_falls_back_to_fp32_torch(repo):
    model = repo.load("edsr")
    backend = TorchBackend(model, "cpu", "bf16", force_precision=True)

    def overflow_under_autocast(module, inputs, output):
        return output + float("inf") if torch.is_autocast_enabled("cpu") else output

    handle = backend.model.net(2).register_forward_hook(overflow_under_autocast)
    try:
        out = backend.run(torch.rand(1, 3, 10, 10), 2)
    finally:
        handle.remove()
    assert torch.isfinite(out).all() and backend.fp16_fallbacks == 1


def test_guard_passes_finite_output_untouched():
    guard = PrecisionGuard("fp16")
    x = torch.ones(2)
    assert guard.check(x, lambda: pytest.fail("re-ran a finite batch")) is x and guard.fallbacks == 0
    assert PrecisionGuard("fp32").check(torch.tensor([float("nan")]), lambda: pytest.fail("fp32 re-run")).isnan().all()


@pytest.mark.parametrize("requested,device,safe,force,expected", [
    ("fp32", "cpu", False, False, "fp32"),
    ("fp16", "cpu", True, False, "fp32"),
    ("bf16", "cpu", True, False, "fp32"),
    ("fp16", "cuda", False, False, "fp32"),
    ("fp16", "cuda", True, False, "fp16"),
    ("bf16", "cuda", True, False, "bf16"),
    ("fp16", "cpu", False, True, "fp16"),
])
def test_reduced_precision_needs_cuda_and_an_fp16_safe_model(requested, device, safe, force, expected):
    precision, note = resolve_precision(requested, torch.device(device), safe, force=force)
    assert precision == expected and bool(note) == (precision != requested)


def test_bad_requests_are_one_line_errors(repo, tmp_path):
    with pytest.raises(BackendError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"), True)
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("edsr", "tflite", repository=repo.root)
    with pytest.raises(BackendError, match="fp32 or fp16"):
        create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path, precision="bf16",
                       force_precision=True)
    backend = create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path)
    with pytest.raises(Exception, match="serves scales"):
        backend.run(torch.rand(1, 3, 8, 8), 4)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no GPU"):
            create_backend("edsr", "onnxruntime", repository=repo.root, device="cuda")


def test_in_graph_self_ensemble_matches_the_pipeline(tmp_path):
    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    backend = create_backend("edsr", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "cache", builder=EXPORT,
                             self_ensemble=True)
    assert backend.describe()["graph_self_ensemble"]
    x = torch.rand(1, 3, 14, 11)
    want = upscale_tensor(TorchBackend(backend.model), x, 2, self_ensemble=True, tile=0)
    assert float((backend.run_ensemble(x, 2).clamp(0, 1) - want).abs().max()) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fp16_channels_last_and_onnxruntime_gpu(repo, tmp_path):
    torch_backend = create_backend("edsr", "torch", repository=repo.root, device="cuda", precision="fp16",
                                   force_precision=True)
    assert torch_backend.describe()["channels_last"] and torch_backend.precision == "fp16"
    x = torch.rand(1, 3, 40, 33)
    reference = upscale_tensor(create_backend("edsr", "torch", repository=repo.root), x, 2, tile=16, batch_size=4)
    got = upscale_tensor(torch_backend, x, 2, tile=16, batch_size=4)
    assert int(((got - reference).abs() * 255).round().max()) <= 8
    from srserve.backends.onnxruntime_backend import has_gpu_provider

    if has_gpu_provider():
        ort_gpu = create_backend("edsr", "onnxruntime", repository=repo.root, device="cuda", cache_dir=tmp_path)
        got = upscale_tensor(ort_gpu, x, 2, tile=16, batch_size=4)
        assert int(((got - reference).abs() * 255).round().max()) <= 1
