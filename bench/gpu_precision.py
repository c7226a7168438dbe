"""Reduced precision on a GPU, measured on the trained models of a repository.

    python bench/gpu_precision.py --dataset ../shared/datasets/benchmark/Set5 [--json out.json]

For every model and scale: Set5 PSNR (Y) through the torch backend in fp32, fp16 and bf16
(forced, whatever the model's ``fp16_safe`` flag says), the largest 8-bit pixel difference of
each reduced-precision output from the fp32 output, how many reduced-precision batches produced NaN/Inf (and were
re-run in fp32 by the backend), and the throughput of each precision on a batch of 128×128 LR
tiles, timed side by side in one run. A model whose fp16 PSNR is within 0.01 dB of fp32, with no
non-finite output and at most a few 8-bit levels of difference, can be marked fp16-safe. Each
throughput also as TFLOP/s (``srserve.models.flops``) and % of the GPU's dense peak for that
precision (``srserve.backends.peaks``; fp32 against TF32, which cuDNN uses by default).
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from backends import time_call  # bench/backends.py: synchronised wall time of one call
from srserve.evaluate import discover, evaluate, load_pair, to_tensor, to_uint8
from srserve.backends import create_backend
from srserve.backends.peaks import device_peak, efficiency
from srserve.models.flops import flops_per_lr_pixel
from srserve.models.repository import Repository
from srserve.pipeline import upscale_tensor

PRECISIONS = ("fp32", "fp16", "bf16")


def max_level_difference(backends: dict, dataset: str, scale: int) -> dict[str, int]:
    """Largest |reduced − fp32| over all pixels of the dataset, in 8-bit levels."""
    worst = {p: 0 for p in backends if p != "fp32"}
    pairs, _ = discover(dataset, scale)
    for pair in pairs:
        _, lr = load_pair(pair, scale)
        x = to_tensor(lr)
        ref = to_uint8(upscale_tensor(backends["fp32"], x, scale)).astype(np.int16)
        for p in worst:
            out = to_uint8(upscale_tensor(backends[p], x, scale)).astype(np.int16)
            worst[p] = max(worst[p], int(np.abs(out - ref).max()))
    return worst


def throughput(backends: dict, scale: int, tile: int, batch: int, rounds: int, device: str) -> dict[str, float]:
    """LR megapixels/s per precision, rounds interleaved so clock changes hit all alike."""
    x = torch.rand(batch, 3, tile, tile, device=device)
    times = {p: [] for p in backends}
    with torch.inference_mode():
        for b in backends.values():
            b.run(x, scale)
            b.run(x, scale)
        for _ in range(rounds):
            for p, b in backends.items():
                times[p].append(time_call(lambda b=b: b.run(x, scale), device))
    return {p: round(batch * tile * tile / statistics.median(t) / 1e6, 3) for p, t in times.items()}


def measure(repo: Repository, name: str, scale: int, precisions: list[str], args) -> dict:
    backends = {prec: create_backend(name, "torch", repository=repo.root, device=args.device, precision=prec,
                                     scales=[scale], force_precision=True) for prec in precisions}
    psnr = {prec: evaluate(b, args.dataset, scale, progress=False).psnr for prec, b in backends.items()}
    diff = max_level_difference(backends, args.dataset, scale)
    speed = throughput(backends, scale, args.tile, args.batch, args.rounds, args.device)
    fallbacks = sum(b.fp16_fallbacks for p, b in backends.items() if p != "fp32")
    flops, peak = flops_per_lr_pixel(backends["fp32"].model, scale), device_peak(args.device)
    rates = {p: efficiency(flops, mpx * 1e6, peak, p, torch.device(args.device).type) for p, mpx in speed.items()}
    return {"model": name, "scale": scale, "psnr": psnr, "max_level_difference": diff, "lr_mpix_per_s": speed,
            "tflops": {p: round(r["tflops"], 3) for p, r in rates.items()},
            "pct_of_peak": {p: None if r["pct_of_peak"] is None else round(r["pct_of_peak"], 2) for p, r in rates.items()},
            "fp16_fallbacks": fallbacks, "tile": args.tile, "batch": args.batch, "device": args.device}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--dataset", required=True)
    p.add_argument("--models", default=None, help="comma-separated names (default: all)")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--device", default="cuda", help="cuda (cpu only to try the script)")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    precisions = args.precisions.split(",")
    repo = Repository(args.repository)
    names = args.models.split(",") if args.models else repo.names()
    rows = []
    print(f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'} torch {torch.__version__}")
    print("| model | scale | PSNR fp32 | PSNR fp16 | PSNR bf16 | max Δ fp16 | max Δ bf16 | non-finite batches | "
          "Mpx/s fp32 | Mpx/s fp16 | Mpx/s bf16 | TFLOP/s (% peak) fp32 | fp16 | bf16 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for scale in repo.get(name).scales:
            try:
                row = measure(repo, name, scale, precisions, args)
            except Exception as exc:  # one model's failure must not cost the others' figures
                print(f"| {name} | x{scale} | failed: {type(exc).__name__}: {exc} |", flush=True)
                continue
            rows.append(row)
            cells = [f"{row['psnr'].get(p, float('nan')):.3f}" for p in PRECISIONS]
            cells += [str(row["max_level_difference"].get(p, "-")) for p in ("fp16", "bf16")]
            cells += [str(row["fp16_fallbacks"])] + [str(row["lr_mpix_per_s"].get(p, "-")) for p in PRECISIONS]
            cells += [f"{row['tflops'][p]} ({row['pct_of_peak'][p]}%)" if p in row["tflops"] else "-" for p in PRECISIONS]
            print(f"| {name} | x{scale} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
