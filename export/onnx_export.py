"""ONNX export with a parity check against PyTorch before anything is written.

Every graph is exported to ``<file>.tmp``, checked (``onnx.checker`` after strict shape
inference), run with ONNX Runtime on fresh inputs of other shapes than the traced one (random
ones and a real image) and compared with the PyTorch ``SRNet``; only a graph that passes is
renamed into place and recorded in ``exports.json``. A failing graph leaves nothing behind.

Pass criteria: fp32 graphs differ from PyTorch by at most one level after 8-bit quantisation;
fp16 graphs must be finite and within ``FP16_MAX_LEVELS`` levels (both numbers are recorded).
The self-ensemble graph is compared with ``srserve.pipeline.upscale_tensor(self_ensemble=True)``
(clamped there, so the graph's output is clamped before comparing); DASR's encoder graph with
``SRNet.estimate_degradation`` (relative difference).

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``. With torch 2.13 it gives
correct dynamic batch/height/width for all five architectures (RRDBNet's size-dependent
unshuffle padding and crop, VDSR's symmetric padding index and bicubic, DASR once its grouped
convolution is rewritten, see ``graphs``) in well under a second per tiny graph; the dynamo
exporter fails to convert VDSR and DASR and took 6-22× longer on EDSR, MDSR and RRDBNet.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from srserve.models.repository import LoadedModel, sha256_file
from srserve.pipeline.tiling import tile_alignment

from srserve.backends.artifacts import Artifact, ExportError, ExportIndex, artifact_file, weights_identity
from .graphs import DegradationGraph, EnsembleGraph, HalfPrecision, SRGraph

DEFAULT_OPSET = 17
MIN_OPSET = 17
ONNX_PRECISIONS = ("fp32", "fp16")
FP32_MAX_LEVELS = 1  # max |Δ| after 8-bit quantisation
FP16_MAX_LEVELS = 8
DEGRADATION_RTOL = 1e-3  # max |Δ| / max |reference| of the encoder's vector
EXAMPLE_SHAPE = (2, 19, 23)  # traced batch, height, width: odd, non-square, unlike the check inputs
CHECK_SHAPE = (3, 26, 31)
REAL_SIDE = 64  # crop of the real image used for the check (LR pixels)


@dataclass(frozen=True)
class GraphJob:
    """One artifact to produce."""

    kind: str  # "sr", "ensemble", "degradation"
    scale: int
    precision: str
    static_tile: int | None = None

    @property
    def file(self) -> str:
        return artifact_file(self.kind, self.scale, self.precision, self.static_tile)


def plan_jobs(model: LoadedModel, scales: Iterable[int], precisions: Iterable[str], *, self_ensemble: bool = False,
              windows: dict[int, int] | None = None) -> list[GraphJob]:
    """The graphs ``srserve export`` writes: per scale the SR graph per precision, its static
    window variant when ``windows[scale]`` is set, the ensemble graphs when asked, and DASR's
    encoder (fp32 only: it runs once per image, on the whole image)."""
    jobs = []
    for scale in scales:
        if model.needs_degradation:
            jobs.append(GraphJob("degradation", scale, "fp32"))
        for precision in precisions:
            if precision not in ONNX_PRECISIONS:
                raise ExportError(f"ONNX graphs are fp32 or fp16, not {precision} (bf16 is a TensorRT build flag)")
            tiles = [None] + ([windows[scale]] if windows and windows.get(scale) else [])
            kinds = ["sr"] + (["ensemble"] if self_ensemble else [])
            jobs += [GraphJob(kind, scale, precision, tile) for kind in kinds for tile in tiles]
    return jobs


def build_module(model: LoadedModel, job: GraphJob) -> torch.nn.Module:
    srnet = model.net(job.scale)
    if job.kind == "degradation":
        module = DegradationGraph(srnet)
    else:
        module = SRGraph(srnet)
        if job.kind == "ensemble":
            module = EnsembleGraph(module, align=tile_alignment(model, job.scale))
    module = module.cpu().float().eval()
    return HalfPrecision(module).eval() if job.precision == "fp16" else module


def io_names(model: LoadedModel, job: GraphJob) -> tuple[list[str], list[str]]:
    if job.kind == "degradation":
        return ["image"], ["degradation"]
    return (["image", "degradation"] if model.needs_degradation else ["image"]), ["sr"]


def io_shapes(model: LoadedModel, job: GraphJob) -> tuple[list[dict], list[dict]]:
    """Inputs/outputs as recorded in exports.json: ints static, strings dynamic axis names."""
    s = job.scale
    if job.static_tile:
        t = job.static_tile
        image, out = ["batch", 3, t, t], ["batch", 3, s * t, s * t]
    else:
        image, out = ["batch", 3, "height", "width"], ["batch", 3, f"height*{s}", f"width*{s}"]
    if job.kind == "degradation":
        return [{"name": "image", "shape": image}], [{"name": "degradation", "shape": ["batch", 256]}]
    inputs = [{"name": "image", "shape": image}]
    if model.needs_degradation:
        inputs.append({"name": "degradation", "shape": ["batch", 256]})
    return inputs, [{"name": "sr", "shape": out}]


def dynamic_axes(inputs: list[dict], outputs: list[dict]) -> dict:
    """The exporter's ``dynamic_axes`` (ONNX dim_param names: ``height*4`` becomes ``height_x4``)."""
    return {io["name"]: {i: d.replace("*", "_x") for i, d in enumerate(io["shape"]) if isinstance(d, str)}
            for io in inputs + outputs}


def example_inputs(model: LoadedModel, job: GraphJob, batch: int, height: int, width: int,
                   image: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing or checking; DASR's degradation comes from its own encoder."""
    if image is None:
        image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))
    if job.kind == "degradation" or not model.needs_degradation:
        return (image,)
    with torch.inference_mode():
        deg = model.net(job.scale).estimate_degradation(image.to(_device_of(model))).cpu()
    return image, deg.clone()


def _device_of(model: LoadedModel) -> torch.device:
    params = [p for net in model.nets.values() for p in net.parameters()]
    return params[0].device if params else torch.device("cpu")


def torch_export(module: torch.nn.Module, inputs: tuple, path: Path, input_names: list[str],
                 output_names: list[str], axes: dict, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic: intended, it is recorded
        torch.onnx.export(module, inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def check_graph(path: Path) -> None:
    """``onnx.checker`` plus strict shape inference; the inferred shapes are kept in the file."""
    import onnx

    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True, data_prop=True)
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises several unrelated exception types
        raise ExportError(f"{path.name}: ONNX check failed: {str(exc).splitlines()[0]}") from None


def cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --- the reference and the comparison --------------------------------------------------------

def reference(model: LoadedModel, job: GraphJob) -> Callable[[tuple], torch.Tensor]:
    """The PyTorch result the graph must reproduce, on ``model``'s own (unmodified) networks."""
    srnet = model.net(job.scale)
    device = _device_of(model)

    @torch.inference_mode()
    def plain(inputs: tuple) -> torch.Tensor:
        inputs = tuple(t.to(device) for t in inputs)
        if job.kind == "degradation":
            return srnet.estimate_degradation(inputs[0]).float().cpu()
        return srnet(*inputs).float().cpu()

    @torch.inference_mode()
    def ensemble(inputs: tuple) -> torch.Tensor:
        from srserve.backends import TorchBackend
        from srserve.pipeline import upscale_tensor

        backend = TorchBackend(model, device)
        outs = []
        for i in range(inputs[0].shape[0]):
            deg = inputs[1][i:i + 1] if len(inputs) > 1 else None
            outs.append(upscale_tensor(backend, inputs[0][i:i + 1], job.scale, self_ensemble=True, tile=0,
                                       degradation=deg))
        return torch.cat(outs).cpu()

    return ensemble if job.kind == "ensemble" else plain


def levels(x: torch.Tensor) -> torch.Tensor:
    """8-bit quantisation as images are written."""
    return (x.clamp(0, 1) * 255).round()


def compare(job: GraphJob, got: torch.Tensor, want: torch.Tensor) -> dict:
    """Parity numbers of one input, and whether they pass this job's criterion."""
    if tuple(got.shape) != tuple(want.shape):
        return {"passed": False, "error": f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}"}
    finite = bool(torch.isfinite(got).all())
    if job.kind == "ensemble":
        got = got.clamp(0, 1)  # the pipeline clamps the ensemble mean; the graph does not
    diff = (got.double() - want.double()).abs()
    result = {"finite": finite, "max_abs": _num(diff.max()), "mean_abs": _num(diff.mean())}
    if job.kind == "degradation":
        relative = float(diff.max() / want.abs().max().clamp_min(1e-12))
        result["max_rel"] = _num(relative)
        result["passed"] = finite and relative <= DEGRADATION_RTOL
        return result
    result["max_levels"] = int((levels(got) - levels(want)).abs().max())
    limit = FP32_MAX_LEVELS if job.precision == "fp32" else FP16_MAX_LEVELS
    result["passed"] = finite and result["max_levels"] <= limit
    return result


def _num(x) -> float:
    x = float(x)
    return x if not math.isfinite(x) else float(f"{x:.4g}")


def criterion(job: GraphJob) -> str:
    if job.kind == "degradation":
        return f"max |Δ| / max |ref| <= {DEGRADATION_RTOL:g}"
    limit = FP32_MAX_LEVELS if job.precision == "fp32" else FP16_MAX_LEVELS
    return f"finite and max 8-bit |Δ| <= {limit}"


# --- check images ------------------------------------------------------------------------------

def datasets_root() -> Path:
    """``$SR_DATASETS``, else ``../shared/datasets`` beside the repository (as training does)."""
    env = os.environ.get("SR_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def real_image(scale: int) -> tuple[torch.Tensor, str] | None:
    """The first Set5 LR image of this scale (or any scale), 1×3×H×W in [0, 1], and its name."""
    root = datasets_root() / "benchmark" / "Set5"
    for s in dict.fromkeys([scale, 4, 2, 3]):
        files = sorted((root / f"x{s}" / "LR").glob("*.png"))
        if files:
            from PIL import Image

            with Image.open(files[0]) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous(), f"Set5/x{s}/LR/{files[0].name}"
    return None


def synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A natural-looking stand-in: smooth colour gradients, hard-edged shapes, fine texture, noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    img = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx * yy])
    for _ in range(6):
        y0, x0 = (torch.rand(2, generator=g) * torch.tensor([height, width])).long().tolist()
        y1, x1 = y0 + max(2, height // 4), x0 + max(2, width // 4)
        img[:, y0:y1, x0:x1] = torch.rand(3, 1, 1, generator=g)
    img += 0.08 * torch.sin(xx * 40 + yy * 25)[None]
    img += 0.02 * torch.randn(3, height, width, generator=g)
    return img.clamp(0, 1)[None]


def real_check_image(scale: int, height: int, width: int) -> tuple[torch.Tensor, str]:
    """A ``height × width`` crop of the Set5 image (centre), else the synthetic image."""
    found = real_image(scale)
    if found is not None:
        image, name = found
        h, w = image.shape[-2:]
        if h >= height and w >= width:
            top, left = (h - height) // 2, (w - width) // 2
            return image[..., top:top + height, left:left + width].contiguous(), name
    return synthetic_image(height, width), "synthetic"


# --- one artifact ------------------------------------------------------------------------------

class References:
    """The check inputs and PyTorch's outputs for them, made once per network, graph kind and
    input shape: a graph exported on the fly and the engines compiled from it (OpenVINO fp32 and
    bf16) are checked against the same numbers, and the PyTorch runs are most of a check's time.
    The inputs are deterministic (seeded, or the fixed real image), so reuse changes no verdict."""

    def __init__(self):
        self._store: dict[tuple, tuple] = {}

    def get(self, model: LoadedModel, job: GraphJob, label: str, batch: int, height: int, width: int,
            image: torch.Tensor | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        srnet = model.net(job.scale)
        key = (id(srnet), job.kind, job.scale, label, batch, height, width)
        if key not in self._store:
            inputs = example_inputs(model, job, batch, height, width, image=image)
            self._store[key] = (srnet, inputs, reference(model, job)(inputs))  # srnet held: its id stays unique
        _, inputs, want = self._store[key]
        return inputs, want


def check_parity(model: LoadedModel, job: GraphJob, path: Path, references: References | None = None) -> dict:
    session = cpu_session(path)

    def run(feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {n: t.detach().cpu().float().numpy() for n, t in feeds.items()})[0])

    return check_parity_with(model, job, run, job.static_tile, references=references)


def check_parity_with(model: LoadedModel, job: GraphJob, run: Callable[[dict], torch.Tensor],
                      side: int | None = None, batch: int = CHECK_SHAPE[0], references: References | None = None) -> dict:
    """Parity of ``run`` (input name -> tensor, to the output) with PyTorch on a random batch and
    a real image: ``side``×``side`` inputs when given (static graphs, engine profiles), else
    shapes other than the traced one. ``references`` reuses PyTorch outputs of earlier checks."""
    references = references or References()
    names = io_names(model, job)[0]
    _, h, w = CHECK_SHAPE
    if side:
        h = w = side
    real_h, real_w = (h, w) if side else (REAL_SIDE, REAL_SIDE)
    real, source = real_check_image(job.scale, real_h, real_w)
    results = {"criterion": criterion(job)}
    for label, (n, hh, ww, image) in (("random", (batch, h, w, None)), ("real", (1, real_h, real_w, real))):
        inputs, want = references.get(model, job, label, n, hh, ww, image)
        got = run(dict(zip(names, inputs)))
        results[label] = {"input": list(inputs[0].shape), **compare(job, got, want)}
    results["real"]["source"] = source
    results["passed"] = results["random"]["passed"] and results["real"]["passed"]
    return results


def export_artifact(model: LoadedModel, job: GraphJob, folder: Path, opset: int = DEFAULT_OPSET,
                    references: References | None = None) -> Artifact:
    """Exports, checks and (only if it passes) writes one graph; raises ``ExportError`` otherwise."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    final = folder / job.file
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    inputs_meta, outputs_meta = io_shapes(model, job)
    input_names, output_names = io_names(model, job)
    batch, h, w = EXAMPLE_SHAPE
    if job.static_tile:
        h = w = job.static_tile
    try:
        module = build_module(model, job)
        torch_export(module, example_inputs(model, job, batch, h, w), tmp, input_names, output_names,
                     dynamic_axes(inputs_meta, outputs_meta), opset)
        check_graph(tmp)
        parity = check_parity(model, job, tmp, references)
        if not parity["passed"]:
            raise ExportError(f"{job.file}: parity check failed ({summarize_parity(parity)}); nothing written")
        tmp.replace(final)
    except ExportError:
        raise
    except Exception as exc:  # the exporter and ORT raise many types; the user gets one line
        raise ExportError(f"{job.file}: export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return Artifact(file=job.file, kind=job.kind, scale=job.scale, precision=job.precision, opset=opset,
                    inputs=inputs_meta, outputs=outputs_meta, static_tile=job.static_tile,
                    sha256=sha256_file(final), bytes=final.stat().st_size,
                    weights_sha256=weights_identity(model, job.scale), parity=parity,
                    exporter=f"torch.onnx TorchScript exporter, torch {torch.__version__}")


def summarize_parity(parity: dict) -> str:
    parts = []
    for label in ("random", "real"):
        r = parity.get(label, {})
        if "error" in r:
            parts.append(f"{label}: {r['error']}")
        elif "max_levels" in r:
            parts.append(f"{label}: max 8-bit Δ {r['max_levels']}, max |Δ| {r['max_abs']:.3g}"
                         + ("" if r["finite"] else ", NaN/Inf"))
        elif "max_rel" in r:
            parts.append(f"{label}: max rel Δ {r['max_rel']:.3g}")
    return "; ".join(parts) + f"; need {parity.get('criterion', '')}"


def parity_summary(artifact: Artifact) -> str:
    return summarize_parity(artifact.parity)


def export_model(model: LoadedModel, folder: str | Path, jobs: list[GraphJob], *, opset: int = DEFAULT_OPSET,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> tuple[list[Artifact], list[str]]:
    """Runs ``jobs``; each passing artifact is recorded in ``folder/exports.json`` as soon as it is
    written. Returns the artifacts and one error line per failed job (the others still run)."""
    from tqdm import tqdm

    folder = Path(folder)
    index = ExportIndex(folder, model.name)
    written, failures = [], []
    bar = tqdm(jobs, desc=f"export {model.name}", unit="graph", disable=None if progress else True,
               leave=False)  # None: no bar when stderr is not a terminal
    for job in bar:
        bar.set_postfix_str(job.file)
        start = time.perf_counter()
        try:
            artifact = export_artifact(model, job, folder, opset)
        except ExportError as exc:
            failures.append(str(exc))
            (log or tqdm.write)(f"FAILED {exc}")
            continue
        index.add(artifact)
        written.append(artifact)
        (log or tqdm.write)(f"{artifact.file:40s} {artifact.bytes / 1e6:7.1f} MB  {time.perf_counter() - start:6.1f} s  "
                            f"{parity_summary(artifact)}")
    return written, failures
