"""OpenVINO on the CPU and the CPU precision policy: fp32 parity with PyTorch through the tiled
pipeline, bf16 within the gate, VDSR's bf16 body, the compiled-model cache, what ``auto`` picks
for faked CPUs and installed packages, the CPU bf16 gate's verdict in model.json, FLOP counts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import srserve.backends as backends
from export_nets import TINY, exported_repository, make_net, tiny_repository
from srserve.backends import BackendError, auto_candidates, create_backend, openvino_backend, resolve_precision
from srserve.backends.base import resolve_cpu_bf16
from srserve.backends.cpu import bf16_flags, cpu_flags, cpu_has_bf16, cpu_model
from srserve.cli import main
from srserve.export import ExportBuilder
from srserve.gate import MAX_LEVELS, GateResult, record_cpu_bf16
from srserve.models.registry import get_spec
from srserve.models.repository import cpu_bf16_scope
from srserve.pipeline import upscale_tensor

pytest.importorskip("openvino")

EXPORT = ExportBuilder()
NATIVE_BF16 = cpu_has_bf16()
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no AMX-BF16/AVX512-BF16: OpenVINO runs "
                                "bf16 as fp32 here")


@pytest.fixture(scope="module")
def repo():
    return exported_repository()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def levels(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round()


def through_pipeline(backend, scale: int) -> torch.Tensor:
    x = torch.rand(1, 3, 30, 22, generator=torch.Generator().manual_seed(1))
    return upscale_tensor(backend, x, scale, tile=12, batch_size=3)


def gate_verdict(scale: int, scope: str, safe: bool = True, model: str = "edsr") -> GateResult:
    return GateResult(model=model, scale=scale, dataset="Set5", images=5, psnr_fp32=30.0,
                      psnr_bf16=30.01 if safe else 29.9, max_levels=2, scope=scope, engine="OpenVINO test",
                      cpu="test CPU", cpu_bf16=["avx512_bf16"], seconds=1.0, measured="2026-01-01")


# --- parity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TINY))
def test_openvino_fp32_equals_torch_within_one_level(repo, tmp_path, name):
    backend = create_backend(name, "openvino", repository=repo.root, cache_dir=tmp_path, precision="fp32",
                             builder=EXPORT)
    reference = create_backend(name, "torch", repository=repo.root)
    for scale in backend.model.scales:
        got, want = through_pipeline(backend, scale), through_pipeline(reference, scale)
        assert got.shape == want.shape == (1, 3, 30 * scale, 22 * scale)
        assert int((levels(got) - levels(want)).abs().max()) <= 1
    info = backend.describe()
    assert info["backend"] == "openvino" and info["precision"] == "fp32" and info["engine"].startswith("OpenVINO")
    assert all(c["runs"] == "fp32" and "need" in c["parity"] for c in info["compiled"].values())


@needs_bf16
@pytest.mark.parametrize("name", ["edsr", "vdsr", "dasr"])
def test_openvino_bf16_stays_within_the_gate_of_fp32(repo, tmp_path, name):
    fp32 = create_backend(name, "openvino", repository=repo.root, cache_dir=tmp_path, precision="fp32", builder=EXPORT)
    bf16 = create_backend(name, "openvino", repository=repo.root, cache_dir=tmp_path, precision="bf16",
                          builder=EXPORT, force_precision=True)
    assert bf16.precision == "bf16" and bf16.describe()["compiled"]["sr x2 bf16"]["runs"] == "bf16"
    got, want = through_pipeline(bf16, 2), through_pipeline(fp32, 2)
    assert int((levels(got) - levels(want)).abs().max()) <= MAX_LEVELS


@needs_bf16
def test_vdsr_runs_only_its_inner_layers_in_bf16(repo, tmp_path):
    backend = create_backend("vdsr", "openvino", repository=repo.root, cache_dir=tmp_path, precision="bf16",
                             builder=EXPORT, force_precision=True)
    assert backend.describe()["compiled"]["sr x2 bf16"]["scope"] == "body:residual_layer"
    runtime = backend._graph("sr", 2, "bf16").compiled.get_runtime_model()
    convs = [(op.get_rt_info()["originalLayersNames"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
             for op in runtime.get_ops() if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    in_bf16 = {names for names, precision in convs if precision == "bf16"}
    inner = TINY["vdsr"][0][1]["num_layers"] - 2  # input and output convolutions stay fp32
    assert len(in_bf16) == inner and all("residual_layer" in names for names in in_bf16)
    assert any(precision == "f32" and "/input/" in names for names, precision in convs)


def test_a_failing_bf16_parity_check_runs_that_scale_in_fp32(repo, tmp_path, monkeypatch):
    checked = []

    def strict(model, kind, scale, precision, run):
        checked.append(precision)
        return {"passed": precision == "fp32", "summary": f"{precision} verdict"}

    monkeypatch.setattr(EXPORT, "check_parity", strict)
    monkeypatch.setattr(backends.openvino_backend, "bf16_flags", lambda: ["avx512_bf16"])  # a faked bf16 CPU
    monkeypatch.setattr(type(repo.load("edsr")), "cpu_bf16_safe", lambda self, scale: True)
    backend = create_backend("edsr", "openvino", repository=repo.root, cache_dir=tmp_path, builder=EXPORT)
    assert backend.precision == "fp32" and "bf16 verdict" in backend.precision_note
    assert checked == ["bf16", "fp32"]
    monkeypatch.setattr(EXPORT, "check_parity", lambda *a: {"passed": False, "summary": "broken"})
    with pytest.raises(BackendError, match="differs from PyTorch"):
        create_backend("edsr", "openvino", repository=repo.root, cache_dir=tmp_path / "other", precision="fp32",
                       builder=EXPORT)


# --- the compiled-model cache and exports -------------------------------------------------------

def snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_auto_exports_into_the_cache_then_restarts_from_it(tmp_path, monkeypatch):
    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    before = snapshot(repo.root)
    cache = tmp_path / "cache"
    first = create_backend("edsr", repository=repo.root, cache_dir=cache, builder=EXPORT, precision="fp32")
    assert first.name == "openvino" and "exported into the cache" in first.describe()["selected"]
    assert (cache / "onnx" / "edsr" / "onnx" / "x2.fp32.onnx").is_file()
    assert snapshot(repo.root) == before  # the repository (possibly a read-only mount) is left alone
    blobs = sorted(p.name for p in (cache / "openvino").glob("*.blob"))
    assert blobs and not first.describe()["compiled"]["sr x2 fp32"]["from_cache"]

    def no_work(*args, **kwargs):
        raise AssertionError("a restart must not export or check again")

    monkeypatch.setattr(EXPORT, "onnx_graph", no_work)
    monkeypatch.setattr(EXPORT, "check_parity", no_work)
    second = create_backend("edsr", repository=repo.root, cache_dir=cache, builder=EXPORT, precision="fp32")
    compiled = second.describe()["compiled"]["sr x2 fp32"]
    assert compiled["from_cache"] and "need" in compiled["parity"]
    assert sorted(p.name for p in (cache / "openvino").glob("*.blob")) == blobs
    x = torch.rand(1, 3, 12, 12)
    assert torch.equal(first.run(x, 2), second.run(x, 2))


def test_a_precision_sharing_a_cached_model_still_runs_its_own(repo, tmp_path):
    """OpenVINO stores one blob for a graph compiled at either hint: each must still run its own."""
    fp32_first = create_backend("edsr", "openvino", repository=repo.root, cache_dir=tmp_path, precision="fp32")
    bf16 = create_backend("edsr", "openvino", repository=repo.root, cache_dir=tmp_path, precision="bf16",
                          force_precision=True)
    fp32_again = create_backend("edsr", "openvino", repository=repo.root, cache_dir=tmp_path, precision="fp32")
    assert fp32_again.describe()["compiled"]["sr x2 fp32"]["from_cache"]
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fp32_first.run(x, 2), fp32_again.run(x, 2))
    assert bf16.describe()["compiled"]["sr x2 bf16"]["runs"] == ("bf16" if NATIVE_BF16 else "fp32")


# --- what auto picks ----------------------------------------------------------------------------

def fake_installed(monkeypatch, *packages):
    monkeypatch.setattr(backends, "installed", lambda package: package in packages)


def test_auto_on_the_cpu_takes_the_fastest_engine_installed(repo, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    bare = tiny_repository(tmp_path / "bare", names=("edsr",)).load("edsr")
    exported = repo.load("edsr")
    fake_installed(monkeypatch, "openvino", "onnxruntime", "onnx")
    assert auto_candidates(exported, cpu, tmp_path) == [
        ("openvino", "CPU, openvino is the fastest engine installed, ONNX graphs present"),
        ("onnxruntime", "CPU, onnxruntime, ONNX graphs present"), ("torch", "CPU, fallback")]
    assert auto_candidates(bare, cpu, tmp_path, EXPORT)[0] == (
        "openvino", "CPU, openvino is the fastest engine installed, ONNX graphs for x2 exported into the cache")
    assert auto_candidates(bare, cpu, tmp_path) == [("torch", "CPU, no usable fp32 ONNX graph for x2")]
    fake_installed(monkeypatch, "openvino", "onnxruntime")  # no onnx: nothing can be exported
    assert auto_candidates(bare, cpu, tmp_path, EXPORT)[0][0] == "torch"
    fake_installed(monkeypatch, "onnxruntime", "onnx")
    assert [name for name, _ in auto_candidates(bare, cpu, tmp_path, EXPORT)] == ["onnxruntime", "torch"]
    fake_installed(monkeypatch)
    assert auto_candidates(exported, cpu, tmp_path, EXPORT) == [
        ("torch", "CPU, neither openvino nor onnxruntime is installed")]
    assert not (tmp_path / "onnx").exists()  # deciding never exports


def test_auto_falls_back_to_the_next_engine_when_one_fails(repo, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise BackendError("OpenVINO cannot compile this")

    monkeypatch.setattr(openvino_backend, "OpenVinoBackend", broken)
    backend = create_backend("edsr", repository=repo.root, cache_dir=tmp_path)
    assert backend.name == "onnxruntime"
    assert "openvino failed: OpenVINO cannot compile this" in backend.describe()["selected"]


@pytest.mark.parametrize("flags,gated,requested,expected", [
    ({"avx512_bf16"}, True, "auto", "bf16"),
    ({"amx_bf16", "amx_tile"}, True, "auto", "bf16"),
    ({"avx512_bf16"}, False, "auto", "fp32"),
    ({"avx512f", "avx512_vnni"}, True, "auto", "fp32"),
    ({"avx512_bf16"}, True, "fp32", "fp32"),  # SR_PRECISION=fp32 overrides the gate
    ({"avx512_bf16"}, False, "bf16", "fp32"),  # bf16 is a request: an ungated scale runs fp32
    ({"avx512_bf16"}, True, "fp16", "fp32"),
])
def test_cpu_precision_policy(repo, flags, gated, requested, expected, monkeypatch):
    model = repo.load("edsr")
    monkeypatch.setattr(type(model), "cpu_bf16_safe", lambda self, scale: gated)
    text = "model name\t: Test CPU\nflags\t\t: fpu sse " + " ".join(sorted(flags)) + "\n"
    precision, note = resolve_cpu_bf16(requested, model, 2, has_bf16=cpu_has_bf16(cpu_flags(text)))
    assert precision == expected and bool(note) == (precision == "fp32" and requested != "fp32")
    assert cpu_model(text) == "Test CPU" and bf16_flags(cpu_flags(text)) == [f for f in ("amx_bf16", "avx512_bf16")
                                                                             if f in flags]


def test_auto_precision_is_fp32_for_the_other_engines():
    assert resolve_precision("auto", torch.device("cpu"), True) == ("fp32", "")
    assert resolve_precision("auto", torch.device("cuda"), True) == ("fp32", "")


def test_a_backend_whose_package_is_missing_is_a_one_line_error(repo, tmp_path, monkeypatch, capsys):
    fake_installed(monkeypatch, "onnx", "onnxruntime")
    with pytest.raises(BackendError, match=r"needs the 'openvino' package, which is not installed") as err:
        create_backend("edsr", "openvino", repository=repo.root, cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    argv = ["upscale", "--repository", str(repo.root), str(image), str(tmp_path / "out.png"), "--model", "edsr",
            "--backend", "openvino", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'srserve[serve]'" in err


# --- the gate's verdict -------------------------------------------------------------------------

def test_gate_verdict_is_recorded_per_scale_and_read_by_auto(tmp_path, monkeypatch):
    repo = tiny_repository(tmp_path / "repo", names=("mdsr",))
    scope = "body:pre_process+body+upsample"  # MDSR's spec: head and tail convolutions stay fp32
    assert cpu_bf16_scope(get_spec("mdsr")) == scope
    record_cpu_bf16(repo, gate_verdict(2, scope, model="mdsr"))
    record_cpu_bf16(repo, gate_verdict(4, scope, safe=False, model="mdsr"))
    data = json.loads((repo.root / "mdsr" / "model.json").read_text())
    verdicts = data["weights"][0]["cpu_bf16"]
    assert verdicts["2"]["safe"] and not verdicts["4"]["safe"] and verdicts["4"]["delta_db"] == -0.1
    assert verdicts["2"]["cpu"] == "test CPU" and verdicts["2"]["scope"] == scope
    model = repo.load("mdsr")
    assert [model.cpu_bf16_safe(s) for s in (2, 3, 4)] == [True, False, False]
    monkeypatch.setattr(backends.openvino_backend, "bf16_flags", lambda: ["avx512_bf16"])
    backend = create_backend(model, "openvino", cache_dir=tmp_path / "cache", builder=EXPORT)
    assert backend.precisions == {2: "bf16", 3: "fp32", 4: "fp32"} and backend.precision == "mixed"
    assert "x3 has not passed the CPU bf16 gate" in backend.precision_note
    monkeypatch.setattr(backends.openvino_backend, "bf16_flags", lambda: [])
    assert create_backend(model, "openvino", cache_dir=tmp_path / "cache").precision == "fp32"


def test_a_verdict_is_void_for_new_weights_or_another_bf16_scope(tmp_path):
    repo = tiny_repository(tmp_path / "repo", names=("edsr", "vdsr"))
    record_cpu_bf16(repo, gate_verdict(2, "graph"))
    assert repo.load("edsr").cpu_bf16_safe(2)
    record_cpu_bf16(repo, gate_verdict(2, "graph", model="vdsr"))
    assert not repo.load("vdsr").cpu_bf16_safe(2)  # measured on the whole graph; VDSR runs a body in bf16
    arch, hparams = TINY["edsr"][0]
    repo.add_weights("edsr", arch, hparams, make_net(arch, hparams, seed=5).state_dict())  # retrained
    assert not repo.load("edsr").cpu_bf16_safe(2)


@needs_bf16
def test_gate_command_measures_and_records(tmp_path, capsys):
    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    hr = tmp_path / "set" / "HR"
    hr.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        smooth = np.kron(rng.integers(0, 256, (6, 7, 3)), np.ones((6, 6, 1))).astype(np.uint8)
        Image.fromarray(smooth).save(hr / f"img{i}.png")
    argv = ["gate", "cpu-bf16", "--repository", str(repo.root), "--model", "edsr", "--dataset", str(tmp_path / "set"),
            "--cache", str(tmp_path / "cache"), "--json", "--quiet", "--threads", "1"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip())
    recorded = json.loads((repo.root / "edsr" / "model.json").read_text())["weights"][0]["cpu_bf16"]["2"]
    assert printed["scale"] == 2 and {k: printed[k] for k in recorded} == recorded
    assert recorded["images"] == 2 and recorded["max_levels"] <= 255 and recorded["cpu_bf16"] == bf16_flags()
    assert recorded["safe"] == (recorded["delta_db"] >= -0.02 and recorded["max_levels"] <= MAX_LEVELS)


def test_gate_refuses_a_cpu_without_native_bf16(tmp_path, monkeypatch, capsys):
    import srserve.gate

    monkeypatch.setattr(srserve.gate, "bf16_flags", lambda: [])
    argv = ["gate", "cpu-bf16", "--repository", str(tmp_path), "--model", "edsr", "--dataset", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no native bf16" in err
