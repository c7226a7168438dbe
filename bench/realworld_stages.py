"""What each stage of a real-world benchmark costs a model: the same images and the same per-image
draws, with the noise and then the JPEG stage switched off.

    .venv/bin/python bench/realworld_stages.py --models esrgan edsr realesrnet
    .venv/bin/python bench/realworld_stages.py --models edsr --dataset ../shared/datasets/benchmark/Set5

Prints Y-PSNR (×4, PyTorch fp32, as ``srserve eval --degrade real-v1``) for: blur only; blur +
noise; the whole pipeline (blur + noise + JPEG). The draws (σ_blur, σ_noise, quality, the noise
field) come from the same per-image generator in every variant; a switched-off noise stage adds
σ 0, a switched-off JPEG stage returns the image unchanged.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import srserve.realworld as realworld  # noqa: E402
from conftest import BENCHMARK  # noqa: E402
from srserve.backends import TorchBackend  # noqa: E402
from srserve.evaluate import evaluate  # noqa: E402
from srserve.models.repository import Repository  # noqa: E402


@contextlib.contextmanager
def variant(name: str, noise: bool, jpeg: bool):
    """``name``'s pipeline with stages off, under its own name (so its draws stay the same)."""
    original, roundtrip = realworld.DEGRADATIONS[name], realworld.jpeg_roundtrip
    realworld.DEGRADATIONS[name] = replace(original, noise_sigma=original.noise_sigma if noise else (0.0, 0.0))
    if not jpeg:
        realworld.jpeg_roundtrip = lambda img, quality: img
    try:
        yield
    finally:
        realworld.DEGRADATIONS[name], realworld.jpeg_roundtrip = original, roundtrip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["edsr"])
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--dataset", type=Path, default=BENCHMARK / "Set14")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--degrade", default="real-v1")
    args = p.parse_args()
    torch.set_num_threads(1)
    repo = Repository(args.repository)
    stages = (("blur", False, False), ("blur+noise", True, False), ("blur+noise+JPEG", True, True))
    print(f"| model | {' | '.join(label for label, _, _ in stages)} |  ({args.dataset.name} x{args.scale}, {args.degrade}, Y-PSNR dB)")
    print("|---|" + "---|" * len(stages))
    bicubic = []
    for model in args.models:
        row = []
        for label, noise, jpeg in stages:
            with variant(args.degrade, noise, jpeg):
                r = evaluate(TorchBackend(repo.load(model, scales=[args.scale])), args.dataset, args.scale,
                             progress=False, degrade=args.degrade)
            row.append(f"{r.psnr:.2f}")
            if len(bicubic) < len(stages):
                bicubic.append(f"{r.bicubic_psnr:.2f}")
        print(f"| `{model}` | {' | '.join(row)} |", flush=True)
    print(f"| bicubic | {' | '.join(bicubic)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
