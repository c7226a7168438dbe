"""INT8 on the CPU: NNCF post-training quantisation of the shipped models, measured against fp32.

    .venv/bin/pip install nncf   # not a dependency of srserve: this measurement only
    .venv/bin/python bench/cpu_int8.py --repository model_repository \\
        --dataset ../shared/datasets/benchmark/Set5 --calibration ../shared/datasets/train/BSDS500-train

For each model and scale: the parity-checked fp32 ONNX graph (exported into a temporary cache),
read by OpenVINO and quantised by ``nncf.quantize`` (8-bit weights and activations, default
preset) with ``--crops`` LR calibration crops: random ``--crop`` × ``--crop`` HR crops of the
training images (BSDS500, never the test set), shrunk by the scale with MATLAB bicubic as the LR
inputs the models were trained on. Then the quantised model runs Set5's whole images like the
CPU bf16 gate does (8-bit rounded outputs, Y-PSNR, largest 8-bit difference from fp32), and a
1×3×``--tile``² LR tile is timed for OpenVINO fp32, bf16 and int8, interleaved, one thread,
median of ``--rounds``. A model would be offered in INT8 only if it loses at most
``MAX_INT8_LOSS_DB`` on Set5; the table says which would.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srserve.backends import create_backend
from srserve.backends.cpu import cpu_flags, cpu_model
from srserve.backends.openvino_backend import CompiledGraph, core
from srserve.evaluate import discover, load_pair, to_tensor, to_uint8
from srserve.export import ExportBuilder
from srserve.metrics import psnr_y
from srserve.models.imresize import imresize_uint8
from srserve.models.repository import Repository
from srserve.pipeline import upscale_tensor

MAX_INT8_LOSS_DB = 0.10


class Int8Backend:
    """The fp32 OpenVINO backend with its SR graph of one scale replaced by the quantised one."""

    name = "openvino"
    precision = "int8"

    def __init__(self, fp32, scale: int, graph: CompiledGraph):
        self.fp32, self.scale, self.graph = fp32, scale, graph
        self.model, self.device = fp32.model, fp32.device

    def run(self, x, scale, degradation=None):
        return self.graph(dict(zip(self.graph.inputs, [t for t in (x, degradation) if t is not None])))

    def degradation(self, x, scale):
        return self.fp32.degradation(x, scale)


def calibration_inputs(folder: Path, scale: int, crops: int, crop: int, fp32, seed: int = 0) -> list[dict]:
    """LR crops (bicubic-shrunk HR crops of training images), as OpenVINO input dicts."""
    rng = np.random.default_rng(seed)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    side = crop * scale
    items = []
    for i in range(crops):
        with Image.open(files[rng.integers(len(files))]) as img:
            hr = np.asarray(img.convert("RGB"))
        top, left = rng.integers(hr.shape[0] - side + 1), rng.integers(hr.shape[1] - side + 1)
        lr = to_tensor(imresize_uint8(hr[top:top + side, left:left + side], 1 / scale))
        feeds = {"image": lr.numpy()}
        if fp32.model.needs_degradation:
            feeds["degradation"] = fp32.degradation(lr, scale).numpy()
        items.append(feeds)
    return items


def quantize(fp32, scale: int, calibration: list[dict], preset: str, ignore: list[str]) -> CompiledGraph:
    import nncf

    path = fp32.describe()["compiled"][f"sr x{scale} fp32"]["graph"]
    model = core().read_model(path)
    options = {"preset": nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE}
    if ignore:
        options["ignored_scope"] = nncf.IgnoredScope(patterns=ignore, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration), **options)
    started = time.perf_counter()
    compiled = core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1,
                                                       "PERFORMANCE_HINT": "LATENCY"})
    return CompiledGraph(compiled, False, time.perf_counter() - started)


def set5(backends: dict, dataset: str, scale: int) -> dict:
    psnr = {k: [] for k in backends}
    worst = {k: 0 for k in backends}
    pairs, _ = discover(dataset, scale)
    for pair in pairs:
        hr, lr = load_pair(pair, scale)
        x = to_tensor(lr)
        outs = {k: to_uint8(upscale_tensor(b, x, scale, tile=0)) for k, b in backends.items()}
        for k, out in outs.items():
            psnr[k].append(psnr_y(out, hr, scale))
            worst[k] = max(worst[k], int(np.abs(out.astype(np.int16) - outs["fp32"].astype(np.int16)).max()))
    return {k: (float(np.mean(v)), worst[k]) for k, v in psnr.items()}


def speed(backends: dict, scale: int, tile: int, rounds: int) -> dict:
    x = torch.rand(1, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    deg = next(iter(backends.values())).degradation(x, scale)
    times = {k: [] for k in backends}
    for b in backends.values():
        b.run(x, scale, deg)
    for _ in range(rounds):
        for k, b in backends.items():
            started = time.perf_counter()
            b.run(x, scale, deg)
            times[k].append(time.perf_counter() - started)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--models", default=None, help="NAME[:SCALE],... (default: every model, every scale)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--calibration", required=True, type=Path, help="training images (HR)")
    p.add_argument("--crops", type=int, default=32)
    p.add_argument("--crop", type=int, default=64, help="LR side of a calibration crop")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--preset", choices=["performance", "mixed"], default="performance",
                   help="NNCF preset: symmetric (performance) or asymmetric (mixed) activations")
    p.add_argument("--ignore", default="", help="regexes of ONNX node names kept in fp32, e.g. "
                   "'.*head.*,.*tail.*,.*_mean.*' (the layers that see the image)")
    args = p.parse_args()
    torch.set_num_threads(1)
    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; flags: {' '.join(f for f in ('avx512_vnni', 'avx512_bf16', 'amx_int8') if f in flags)}")
    repo = Repository(args.repository)
    wanted = [m.split(":") for m in args.models.split(",")] if args.models else [[n] for n in repo.names()]
    print(f"{'model':<7} {'scale':>5} {'PSNR fp32':>9} {'PSNR int8':>9} {'Δ dB':>7} {'max Δ':>5} {'bf16 Δ dB':>9} "
          f"{'fp32 ms':>8} {'bf16 ms':>8} {'int8 ms':>8}  INT8 offered")
    with tempfile.TemporaryDirectory(prefix="srserve-int8-") as cache:
        for item in wanted:
            name = item[0]
            for scale in ([int(item[1])] if len(item) > 1 else repo.get(name).scales):
                model = repo.load(name, "cpu", [scale])
                common = dict(device="cpu", cache_dir=cache, builder=ExportBuilder(), threads=1, force_precision=True)
                fp32 = create_backend(model, "openvino", precision="fp32", **common)
                bf16 = create_backend(model, "openvino", precision="bf16", **common)
                calibration = calibration_inputs(args.calibration, scale, args.crops, args.crop, fp32)
                int8 = Int8Backend(fp32, scale, quantize(fp32, scale, calibration, args.preset,
                                                         [r for r in args.ignore.split(",") if r]))
                backends = {"fp32": fp32, "bf16": bf16, "int8": int8}
                quality = set5(backends, args.dataset, scale)
                ms = speed(backends, scale, args.tile, args.rounds)
                loss = quality["fp32"][0] - quality["int8"][0]
                print(f"{name:<7} {'x' + str(scale):>5} {quality['fp32'][0]:>9.3f} {quality['int8'][0]:>9.3f} "
                      f"{-loss:>+7.3f} {quality['int8'][1]:>5} {quality['bf16'][0] - quality['fp32'][0]:>+9.3f} "
                      f"{ms['fp32']:>8.1f} {ms['bf16']:>8.1f} {ms['int8']:>8.1f}  "
                      f"{'yes' if loss <= MAX_INT8_LOSS_DB else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
