"""The Triton model repository: every config.pbtxt parses as Triton's ModelConfig protobuf."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from export_nets import exported_repository
from srserve.backends.artifacts import Artifact, ExportIndex
from srserve.export.triton import config_pbtxt, triton_name, write_triton_repository


def model_config_pb2():
    """Triton's generated ModelConfig module from tritonclient (dev extra). Loaded by file: the
    package's grpc/__init__ wants grpcio, which parsing a config does not need."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install 'srserve[dev]')")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse(text: str):
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    return pb2, text_format.Parse(text, pb2.ModelConfig())


@pytest.fixture(scope="module")
def triton_dir(tmp_path_factory):
    repo = exported_repository()
    out = tmp_path_factory.mktemp("triton")
    for name in ("edsr", "dasr"):
        index = ExportIndex(repo.root / name, name)
        write_triton_repository(out, name, repo.root / name, index.artifacts, max_batch_size=4)
    return out


def test_every_config_parses_and_describes_the_graph(triton_dir):
    configs = sorted(triton_dir.glob("*/config.pbtxt"))
    assert {c.parent.name for c in configs} == {"edsr_x2", "dasr_x2", "dasr_x2_degradation"}
    for path in configs:
        pb2, config = parse(path.read_text())
        assert config.name == path.parent.name
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
        assert config.HasField("dynamic_batching") and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
        assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
        assert all(t.data_type == pb2.TYPE_FP32 for t in list(config.input) + list(config.output))
        assert (path.parent / "1" / "model.onnx").is_file()


def test_dims_exclude_batch_and_mark_dynamic_axes(triton_dir):
    _, sr = parse((triton_dir / "dasr_x2" / "config.pbtxt").read_text())
    assert [(t.name, list(t.dims)) for t in sr.input] == [("image", [3, -1, -1]), ("degradation", [256])]
    assert [(t.name, list(t.dims)) for t in sr.output] == [("sr", [3, -1, -1])]
    _, encoder = parse((triton_dir / "dasr_x2_degradation" / "config.pbtxt").read_text())
    assert [(t.name, list(t.dims)) for t in encoder.output] == [("degradation", [256])]


def test_static_variant_and_tensorrt_plan_configs(tmp_path):
    static = Artifact(file="onnx/x4.fp16.tile40.onnx", kind="sr", scale=4, precision="fp16", opset=17,
                      inputs=[{"name": "image", "shape": ["batch", 3, 40, 40]}],
                      outputs=[{"name": "sr", "shape": ["batch", 3, 160, 160]}], static_tile=40)
    name = triton_name("edsr", static)
    assert name == "edsr_x4_fp16_t40"
    pb2, config = parse(config_pbtxt(name, static, instance_kind="KIND_CPU", instance_count=2))
    assert list(config.input[0].dims) == [3, 40, 40] and list(config.output[0].dims) == [3, 160, 160]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU and config.instance_group[0].count == 2

    dynamic = Artifact(file="onnx/x4.fp32.onnx", kind="sr", scale=4, precision="fp32", opset=17,
                       inputs=[{"name": "image", "shape": ["batch", 3, "height", "width"]}],
                       outputs=[{"name": "sr", "shape": ["batch", 3, "height*4", "width*4"]}])
    (tmp_path / "src" / "onnx").mkdir(parents=True)
    (tmp_path / "src" / "onnx" / "x4.fp32.onnx").write_bytes(b"onnx")
    (tmp_path / "engine.plan").write_bytes(b"plan")
    write_triton_repository(tmp_path / "out", "edsr", tmp_path / "src", [dynamic],
                            engines={(4, "fp16"): tmp_path / "engine.plan"}, engine_max_batch=6)
    _, plan = parse((tmp_path / "out" / "edsr_x4_fp16_trt" / "config.pbtxt").read_text())
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 6
    assert (tmp_path / "out" / "edsr_x4_fp16_trt" / "1" / "model.plan").read_bytes() == b"plan"


def test_a_malformed_config_is_rejected_by_the_parser():
    """The check is real: the protobuf parser rejects what Triton would reject."""
    from google.protobuf.text_format import ParseError

    with pytest.raises(ParseError):
        parse('name: "x"\nplatform: "onnxruntime_onnx"\nmax_batch_sizes: 4\n')
