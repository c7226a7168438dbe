"""A model repository NVIDIA Triton Inference Server can load: the scale-out path.

    DIR/edsr_x4/config.pbtxt            platform onnxruntime_onnx, dynamic batching
    DIR/edsr_x4/1/model.onnx            the parity-checked artifact
    DIR/edsr_x4_ensemble/...            the in-graph self-ensemble (``--self-ensemble``)
    DIR/edsr_x4_fp16/...                the fp16 graph
    DIR/edsr_x4_t160/...                the static 160×160 window variant (``--tile``)
    DIR/dasr_x4_degradation/...         DASR's encoder (call it once per image, then dasr_x4
                                        for each tile with its output as ``degradation``)
    DIR/edsr_x4_trt/1/model.plan        a TensorRT engine (``--format tensorrt``), platform tensorrt_plan

Triton batches requests of equal shape: clients should send tiles of one window size (as
srserve's own server does). Dimensions are ``-1`` where the graph is dynamic; the batch axis is
implicit (``max_batch_size``). A TensorRT plan only loads in a Triton built with the same
TensorRT version, on the same GPU model, as the one that built it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from srserve.backends.cuda import DEFAULT_MAX_BATCH
from srserve.backends.artifacts import Artifact

DEFAULT_QUEUE_DELAY_US = 2000


def triton_name(model: str, artifact: Artifact, engine_precision: str | None = None) -> str:
    """``edsr_x4``, ``edsr_x4_ensemble_fp16_t160``; engines: ``edsr_x4_trt``, ``edsr_x4_fp16_trt``."""
    name = f"{model}_x{artifact.scale}"
    if artifact.kind != "sr":
        name += f"_{artifact.kind}"
    precision = engine_precision or artifact.precision
    if precision != "fp32":
        name += f"_{precision}"
    if artifact.static_tile:
        name += f"_t{artifact.static_tile}"
    return name + ("_trt" if engine_precision else "")


def _dims(shape: list) -> str:
    """The dims without the batch axis; named (dynamic) axes are -1."""
    return ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape[1:])


def _tensors(section: str, tensors: list[dict]) -> str:
    items = ",\n".join(f'  {{\n    name: "{t["name"]}"\n    data_type: TYPE_FP32\n    dims: [ {_dims(t["shape"])} ]\n  }}'
                       for t in tensors)
    return f"{section} [\n{items}\n]\n"


def config_pbtxt(name: str, artifact: Artifact, *, platform: str = "onnxruntime_onnx",
                 max_batch_size: int = DEFAULT_MAX_BATCH, instance_kind: str = "KIND_GPU", instance_count: int = 1,
                 max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
    """``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``) for one artifact."""
    preferred = sorted({b for b in (max_batch_size // 2, max_batch_size) if b >= 1})
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            + _tensors("input", artifact.inputs) + _tensors("output", artifact.outputs)
            + "dynamic_batching {\n"
            + f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            + f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
            + f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]\n")


def write_model(out_dir: Path, name: str, source: Path, artifact: Artifact, *, platform: str, **options) -> Path:
    """``out_dir/name/config.pbtxt`` and ``out_dir/name/1/model.{onnx,plan}``."""
    folder = Path(out_dir) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    filename = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    shutil.copyfile(source, folder / "1" / filename)
    (folder / "config.pbtxt").write_text(config_pbtxt(name, artifact, platform=platform, **options))
    return folder


def write_triton_repository(out_dir: str | Path, model: str, model_folder: Path, artifacts: list[Artifact], *,
                            engines: dict[tuple[int, str], Path] | None = None, engine_max_batch: int | None = None,
                            **options) -> list[Path]:
    """One Triton model per ONNX artifact, plus one per TensorRT engine (``engines``: (scale,
    precision) -> plan built from the dynamic fp32 SR graph, whose profile bounds the batch)."""
    written = []
    for artifact in artifacts:
        written.append(write_model(Path(out_dir), triton_name(model, artifact), model_folder / artifact.file,
                                   artifact, platform="onnxruntime_onnx", **options))
    for (scale, precision), plan in (engines or {}).items():
        sr = next(a for a in artifacts if (a.kind, a.scale, a.precision, a.static_tile) == ("sr", scale, "fp32", None))
        engine_options = dict(options)
        if engine_max_batch:
            engine_options["max_batch_size"] = engine_max_batch
        written.append(write_model(Path(out_dir), triton_name(model, sr, precision), plan, sr,
                                   platform="tensorrt_plan", **engine_options))
    return written
