"""``srserve eval --model NAME --scale S --dataset DIR``: PSNR/SSIM (Y) with the standard protocol.

Datasets: ``DIR/x{S}/HR`` + ``DIR/x{S}/LR`` (paired, LR used as given) or ``DIR/HR`` (LR made
with MATLAB bicubic). ``--scale 2,3,4`` evaluates several scales with one loaded model; with
``--json`` that prints one JSON object per scale, one per line (JSON Lines).
"""
from __future__ import annotations

import argparse
import json

from .arguments import parse_scales, tile_size

HELP = "evaluate a model on a benchmark folder (PSNR/SSIM on Y, vs bicubic)"

EPILOG = """dataset layouts:
  DIR/x{S}/HR/*, DIR/x{S}/LR/*  per-scale pairs with the same file names (LR used as given)
  DIR/HR/*                      HR only; LR made with MATLAB bicubic imresize
HR is mod-cropped to the scale; PSNR/SSIM on BT.601 Y with S pixels shaved per border
(gray images on their gray values, as the MATLAB scripts behind published tables do).
With --json, one JSON object per scale is printed, one per line.
--degrade real-v1 makes the LR from the HR images with a fixed, seeded pipeline (blur,
bicubic downscale, noise, JPEG; see srserve/realworld.py) instead of bicubic alone; the
output names the SHA-256 of those LR images."""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, help="model name in the repository, or the built-in 'bicubic'")
    p.add_argument("--scale", required=True, type=parse_scales, metavar="S[,S...]", help="scale(s), e.g. 4 or 2,3,4")
    p.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder (layouts below)")
    p.add_argument("--self-ensemble", action="store_true", help="geometric self-ensemble x8 (EDSR+)")
    p.add_argument("--tile", type=tile_size, default=0, metavar="N", help="LR tile size; 0 = whole image (default)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--degrade", metavar="NAME",
                   help="real-world benchmark: LR made from HR by this seeded pipeline (real-v1)")
    p.add_argument("--json", action="store_true", help="machine-readable output: one JSON object per scale")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from srserve.backends import create_backend
    from srserve.evaluate import check_scale, discover, evaluate
    from srserve.realworld import get_degradation

    if args.degrade:
        get_degradation(args.degrade)  # an unknown name fails before the model loads

    backend = create_backend(args.model, "torch", repository=args.repository, device=args.device, scales=args.scale)
    for scale in args.scale:  # fail before the first long run, not after it
        check_scale(backend, scale)
        discover(args.dataset, scale)
    results = []
    for scale in args.scale:
        result = evaluate(backend, args.dataset, scale, self_ensemble=args.self_ensemble, tile=args.tile,
                          progress=not args.quiet, degrade=args.degrade)
        if args.json:
            print(json.dumps(result.to_json()), flush=True)
        results.append(result)
    if not args.json:
        print(format_table(results))
    return 0


def format_table(results) -> str:
    header = ("model", "scale", "images", "PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM", "gain")
    rows = [header] + [
        (r.model + ("+" if r.self_ensemble else ""), f"x{r.scale}", str(r.images), f"{r.psnr:.2f}", f"{r.ssim:.4f}",
         f"{r.bicubic_psnr:.2f}", f"{r.bicubic_ssim:.4f}", f"{r.gain:+.2f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if results:
        lines.append(f"dataset {results[0].dataset} (LR {results[0].lr_source}), "
                     f"{sum(r.seconds for r in results):.1f} s")
        lines += [f"x{r.scale} LR images sha256 {r.lr_sha256}" for r in results if r.lr_sha256]
    return "\n".join(lines)
