"""How hard a training degradation config is, against the real-world benchmark it is meant for.

    .venv/bin/python bench/degradation_severity.py train/configs/realesrnet.yaml
    .venv/bin/python bench/degradation_severity.py train/configs/realesrnet.yaml --draws 5 --dataset ../shared/datasets/benchmark/Set5

For every HR image of the dataset (×4 by default) it makes the clean LR (MATLAB bicubic, as the
clean benchmark) and compares with it, in Y-PSNR of 8-bit images: the ``real-v1`` LR of that image
(``srserve.realworld``), and ``--draws`` LR images made by the config's ``data.degradation``
(``train/realistic.py``, seeded). A training pipeline much harsher than the benchmark (a lower
PSNR) teaches the network to smooth away detail that the benchmark's inputs still have; one much
milder leaves it unprepared. Prints median, 10th and 90th percentile of each.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import BENCHMARK  # noqa: E402
from srserve.evaluate import as_rgb, discover, mod_crop, read_image  # noqa: E402
from srserve.metrics import psnr_y  # noqa: E402
from srserve.models.imresize import imresize_uint8  # noqa: E402
from srserve.realworld import get_degradation  # noqa: E402
from srserve.train.config import load_config  # noqa: E402
from srserve.train.realistic import RealisticDegradation, degrade  # noqa: E402


def hr_images(dataset: Path, scale: int) -> list[tuple[str, np.ndarray]]:
    """The dataset's HR images as ``srserve eval`` reads them (mod-cropped), in RGB."""
    pairs, _ = discover(dataset, scale)
    return [(pair.name, as_rgb(mod_crop(read_image(pair.hr_path), scale))) for pair in pairs]


def clean_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    return imresize_uint8(hr, output_shape=(hr.shape[0] // scale, hr.shape[1] // scale))


def summary(values: list[float]) -> str:
    return (f"median {np.median(values):.2f}  p10 {np.percentile(values, 10):.2f}  "
            f"p90 {np.percentile(values, 90):.2f}  (n={len(values)})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="a training config with data.degradation")
    p.add_argument("--dataset", type=Path, default=BENCHMARK / "Set14")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--benchmark", default="real-v1", help="the real-world pipeline to compare with")
    p.add_argument("--draws", type=int, default=3, help="training LR images per HR image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    settings = load_config(args.config).data.get("degradation")
    training = RealisticDegradation.from_config(settings)
    benchmark = get_degradation(args.benchmark)
    generator = torch.Generator().manual_seed(args.seed)
    bench_psnr, train_psnr = [], []
    for name, hr in hr_images(args.dataset, args.scale):
        reference = clean_lr(hr, args.scale)
        bench_psnr.append(psnr_y(benchmark.apply(hr, args.scale, name), reference))
        batch = torch.from_numpy(hr).permute(2, 0, 1)[None].float().div(255)
        for _ in range(args.draws):
            lr, _ = degrade(batch, args.scale, training, generator)
            lr8 = lr[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
            train_psnr.append(psnr_y(lr8, reference))
    print(f"LR vs the clean bicubic LR, Y-PSNR (dB), {args.dataset.name} x{args.scale}:")
    print(f"  {args.benchmark:>10s}: {summary(bench_psnr)}")
    print(f"  {args.config.name:>10s}: {summary(train_psnr)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
