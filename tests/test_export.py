"""ONNX export: parity for every architecture and MDSR head, the self-ensemble graph, DASR's split
graphs, static and fp16 variants, the exports index, and that a failing graph is never written."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export_nets import HEADS, TINY, exported_repository, make_net, tiny_repository
from srserve.backends import TorchBackend
from srserve.cli import main
from srserve.backends.artifacts import ExportError, ExportIndex, weights_identity
from srserve.export.onnx_export import (FP16_MAX_LEVELS, GraphJob, export_artifact, export_model, levels, plan_jobs)
from srserve.pipeline import upscale_tensor


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path, *inputs):
    s = session(path)
    feeds = {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs)}
    return torch.from_numpy(s.run(None, feeds)[0])


def max_levels(a, b) -> int:
    return int((levels(a) - levels(b)).abs().max())


@pytest.fixture(scope="module")
def repo():
    return exported_repository()


@pytest.mark.parametrize("name,scale", HEADS, ids=[f"{n}-x{s}" for n, s in HEADS])
def test_graph_matches_pytorch_for_every_architecture_and_head(repo, name, scale):
    model = repo.load(name)
    index = ExportIndex(repo.root / name, name)
    artifact, why = index.usable("sr", scale, "fp32", weights_identity(model, scale))
    assert artifact is not None, why
    assert artifact.parity["passed"] and artifact.parity["real"]["max_levels"] <= 1
    # independent check on a shape used neither for tracing nor for the recorded parity
    x = torch.rand(2, 3, 15, 22, generator=torch.Generator().manual_seed(scale))
    inputs = (x,)
    if model.needs_degradation:
        inputs = (x, model.net(scale).estimate_degradation(x).detach())
    with torch.inference_mode():
        want = model.net(scale)(*inputs)
    got = run_onnx(index.path(artifact), *inputs)
    assert got.shape == (2, 3, 15 * scale, 22 * scale)
    assert float((got - want).abs().max()) < 1e-4
    assert max_levels(got, want) <= 1
    assert float(want.clamp(0, 1).std()) > 0.01  # the comparison is not vacuous (all clamped)


def test_mdsr_every_head_is_its_own_graph(repo):
    index = ExportIndex(repo.root / "mdsr", "mdsr")
    files = {index.find("sr", s, "fp32").file for s in (2, 3, 4)}
    assert files == {"onnx/x2.fp32.onnx", "onnx/x3.fp32.onnx", "onnx/x4.fp32.onnx"}
    x = torch.rand(1, 3, 12, 12)
    outs = [run_onnx(index.path(index.find("sr", s, "fp32")), x) for s in (2, 3, 4)]
    assert [o.shape[-1] for o in outs] == [24, 36, 48]


def test_index_records_what_a_loader_needs(repo):
    index = ExportIndex(repo.root / "edsr", "edsr")
    data = json.loads((repo.root / "edsr" / "exports.json").read_text())
    assert data["format"] == "srserve-exports/1" and data["model"] == "edsr"
    artifact = index.find("sr", 2, "fp32")
    path = index.path(artifact)
    entry = repo.get("edsr")
    assert artifact.weights_sha256 == entry.weights_for(2).sha256
    assert artifact.opset >= 17 and artifact.bytes == path.stat().st_size
    assert artifact.inputs == [{"name": "image", "shape": ["batch", 3, "height", "width"]}]
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == artifact.opset
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert set(artifact.parity) >= {"random", "real", "criterion", "passed"}


def test_dasr_encoder_and_sr_network_are_separate_graphs(repo):
    model = repo.load("dasr")
    index = ExportIndex(repo.root / "dasr", "dasr")
    encoder, sr = index.find("degradation", 2, "fp32"), index.find("sr", 2, "fp32")
    assert [i["name"] for i in encoder.inputs] == ["image"] and encoder.outputs[0]["shape"] == ["batch", 256]
    assert [i["name"] for i in sr.inputs] == ["image", "degradation"]
    x = torch.rand(3, 3, 20, 17)
    deg = run_onnx(index.path(encoder), x)
    with torch.inference_mode():
        want_deg = model.net(2).estimate_degradation(x)
        want = model.net(2)(x)
    assert deg.shape == (3, 256)
    assert float((deg - want_deg).abs().max() / want_deg.abs().max()) < 1e-4
    got = run_onnx(index.path(sr), x, deg)  # the split graphs chained = the whole PyTorch model
    assert max_levels(got, want) <= 1 and float((got - want).abs().max()) < 1e-4
    other = run_onnx(index.path(sr), x, deg.flip(0))  # the degradation input is really used
    assert float((other - got).abs().max()) > 1e-6


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """EDSR with static-window, fp16 and self-ensemble graphs; RRDB x2 ensemble (odd sizes pad)."""
    repo = tiny_repository(tmp_path_factory.mktemp("variants"), names=("edsr", "rrdb"))
    edsr = repo.load("edsr")
    jobs = [GraphJob("sr", 2, "fp32", static_tile=20), GraphJob("sr", 2, "fp16"), GraphJob("ensemble", 2, "fp32")]
    written, failures = export_model(edsr, repo.root / "edsr", jobs, progress=False, log=lambda line: None)
    assert not failures, failures
    rrdb = repo.load("rrdb", scales=[2])
    written, failures = export_model(rrdb, repo.root / "rrdb", [GraphJob("ensemble", 2, "fp32")], progress=False,
                                     log=lambda line: None)
    assert not failures, failures
    return repo


def test_static_tile_variant_has_a_fixed_window_and_dynamic_batch(variants):
    index = ExportIndex(variants.root / "edsr", "edsr")
    artifact = index.find("sr", 2, "fp32", static_tile=20)
    assert artifact.file == "onnx/x2.fp32.tile20.onnx" and artifact.inputs[0]["shape"] == ["batch", 3, 20, 20]
    path = index.path(artifact)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 20, 20]
    model = variants.load("edsr")
    x = torch.rand(4, 3, 20, 20)
    with torch.inference_mode():
        assert max_levels(run_onnx(path, x), model.net(2)(x)) <= 1
    with pytest.raises(Exception):
        run_onnx(path, torch.rand(1, 3, 21, 20))


def test_fp16_graph_is_finite_with_fp32_interface_and_bounded_difference(variants):
    index = ExportIndex(variants.root / "edsr", "edsr")
    artifact = index.find("sr", 2, "fp16")
    assert artifact.parity["random"]["finite"] and artifact.parity["random"]["max_levels"] <= FP16_MAX_LEVELS
    s = session(index.path(artifact))
    assert s.get_inputs()[0].type == "tensor(float)" and s.get_outputs()[0].type == "tensor(float)"
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        want = variants.load("edsr").net(2)(x)
    got = run_onnx(index.path(artifact), x)
    assert torch.isfinite(got).all() and max_levels(got, want) <= FP16_MAX_LEVELS
    assert float((got - want).abs().max()) > 0  # it really computes in fp16


@pytest.mark.parametrize("name,shape", [("edsr", (1, 3, 18, 13)), ("rrdb", (1, 3, 17, 23))])
def test_self_ensemble_graph_matches_the_pipeline_ensemble(variants, name, shape):
    model = variants.load(name, scales=[2])
    index = ExportIndex(variants.root / name, name)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    want = upscale_tensor(TorchBackend(model), x, 2, self_ensemble=True, tile=0)
    got = run_onnx(index.path(index.find("ensemble", 2, "fp32")), x)
    assert got.shape == want.shape
    assert float((got.clamp(0, 1) - want).abs().max()) < 1e-5  # the graph is unclamped, the pipeline clamps
    single = upscale_tensor(TorchBackend(model), x, 2, tile=0)
    assert float((single - want).abs().max()) > 1e-4  # the ensemble differs from one pass


def test_failing_graph_is_not_written(tmp_path, monkeypatch):
    from srserve.export import onnx_export

    repo = tiny_repository(tmp_path, names=("edsr",))
    model = repo.load("edsr")
    original = onnx_export.reference

    def off_by_a_little(model, job):
        ref = original(model, job)
        return lambda inputs: ref(inputs) + 0.01  # ~2.5 levels: fails the fp32 criterion

    monkeypatch.setattr(onnx_export, "reference", off_by_a_little)
    with pytest.raises(ExportError, match="parity check failed"):
        export_artifact(model, GraphJob("sr", 2, "fp32"), repo.root / "edsr")
    assert not list((repo.root / "edsr").rglob("*.onnx*"))
    written, failures = export_model(model, repo.root / "edsr", [GraphJob("sr", 2, "fp32")], progress=False,
                                     log=lambda line: None)
    assert written == [] and len(failures) == 1
    assert ExportIndex(repo.root / "edsr", "edsr").artifacts == []


def test_artifact_of_other_weights_is_stale(tmp_path):
    repo = tiny_repository(tmp_path, names=("edsr",))
    model = repo.load("edsr")
    export_model(model, repo.root / "edsr", [GraphJob("sr", 2, "fp32")], progress=False, log=lambda line: None)
    index = ExportIndex(repo.root / "edsr", "edsr")
    assert index.usable("sr", 2, "fp32", weights_identity(model, 2))[0] is not None
    arch, hparams = TINY["edsr"][0]
    repo.add_weights("edsr", arch, hparams, make_net(arch, hparams, seed=99).state_dict())  # retrained
    artifact, why = index.usable("sr", 2, "fp32", weights_identity(repo.load("edsr"), 2))
    assert artifact is None and "stale" in why
    index.path(index.find("sr", 2, "fp32")).write_bytes(b"corrupt")
    assert "sha256" in index.usable("sr", 2, "fp32", weights_identity(model, 2))[1]


def test_plan_jobs_lists_every_variant(tmp_path):
    repo = tiny_repository(tmp_path, names=("dasr",))
    jobs = plan_jobs(repo.load("dasr"), [2], ["fp32", "fp16"], self_ensemble=True, windows={2: 20})
    assert sorted(j.file for j in jobs) == sorted([
        "onnx/x2.degradation.fp32.onnx",
        "onnx/x2.fp32.onnx", "onnx/x2.fp32.tile20.onnx", "onnx/x2.ensemble.fp32.onnx", "onnx/x2.ensemble.fp32.tile20.onnx",
        "onnx/x2.fp16.onnx", "onnx/x2.fp16.tile20.onnx", "onnx/x2.ensemble.fp16.onnx", "onnx/x2.ensemble.fp16.tile20.onnx"])


def test_opset_and_precision_are_validated(tmp_path):
    repo = tiny_repository(tmp_path, names=("edsr",))
    model = repo.load("edsr")
    with pytest.raises(ExportError, match="opset"):
        export_artifact(model, GraphJob("sr", 2, "fp32"), repo.root / "edsr", opset=13)
    with pytest.raises(ExportError, match="bf16"):
        plan_jobs(model, [2], ["bf16"])


def test_cli_export_writes_graphs_index_and_triton(tmp_path, capsys):
    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    rc = main(["export", "--repository", str(repo.root), "--model", "edsr", "--quiet",
               "--triton", str(tmp_path / "triton")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1 graph(s) written" in out and (repo.root / "edsr" / "onnx" / "x2.fp32.onnx").is_file()
    assert (tmp_path / "triton" / "edsr_x2" / "1" / "model.onnx").is_file()
    assert (tmp_path / "triton" / "edsr_x2" / "config.pbtxt").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--scales", "4"], "serves scales [2], not x4"),
    (["--precision", "bf16"], "bf16 exists only as a TensorRT build flag"),
    (["--model", "nope"], "no model 'nope'"),
])
def test_cli_export_errors_are_one_line(tmp_path, capsys, argv, message):
    repo = tiny_repository(tmp_path, names=("edsr",))
    args = ["export", "--repository", str(repo.root), "--model", "edsr", "--quiet"] + argv
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_tensorrt_without_tensorrt_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present: the GPU tests cover this path")
    except ImportError:
        pass
    repo = tiny_repository(tmp_path, names=("edsr",))
    assert main(["export", "--repository", str(repo.root), "--model", "edsr", "--format", "tensorrt"]) == 1
    err = capsys.readouterr().err
    assert ("tensorrt is not installed" in err or "CUDA GPU" in err) and not list(repo.root.rglob("*.onnx"))


@pytest.mark.slow
def test_shipped_models_export_with_parity(tmp_path):
    """Every trained model in model_repository/ exports at its first scale with fp32 parity."""
    import shutil
    from pathlib import Path

    from srserve.models.repository import Repository

    shipped = Repository(Path(__file__).resolve().parents[1] / "model_repository")
    if not shipped.names():
        pytest.skip("no shipped models in model_repository/")
    for name in shipped.names():
        shutil.copytree(shipped.root / name, tmp_path / name, ignore=shutil.ignore_patterns("onnx", "exports.json"))
        model = Repository(tmp_path).load(name, scales=[shipped.get(name).scales[0]])
        scale = model.scales[0]
        jobs = plan_jobs(model, [scale], ["fp32"])
        written, failures = export_model(model, tmp_path / name, jobs, progress=False, log=lambda line: None)
        assert not failures, failures
        sr = next(a for a in written if a.kind == "sr")
        assert sr.parity["real"]["max_levels"] <= 1 and sr.parity["real"]["source"] != ""
        assert np.isfinite(sr.parity["random"]["max_abs"])
