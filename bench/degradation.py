"""Real-ESRGAN degradation pipeline (train/realistic.py) on the CPU: its time per batch beside
the training step it feeds, so one can see whether it would starve the network.

For each (batch, HR crop) it times, with one thread by default: the whole pipeline, the
pipeline without its JPEG stages (JPEG goes through Pillow on the CPU, the rest is torch and
could run on a GPU), and one L1 training step (forward + backward + Adam) of RRDBNet b4f64 (the
``realesrnet`` size) on the resulting LR batch. Median of ``--repeats`` runs each (pipeline run i of
both variants draws with seed i).

    python bench/degradation.py                            # batch 4 x 128 px and 16 x 256 px
    python bench/degradation.py --shapes 4x128 --repeats 5 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipeline_seconds(config, hr, repeats: int) -> tuple[float, float]:
    """Median seconds of the pipeline with and without its Pillow JPEG stages; run i of both uses
    seed i, so both variants see the same kernels, sizes and noise (draws differ between runs)."""
    import torch

    from srserve.train import realistic

    def timed(seed: int) -> float:
        start = time.perf_counter()
        config(hr, 4, torch.Generator().manual_seed(seed))
        return time.perf_counter() - start

    full = [timed(i) for i in range(repeats)]
    original = realistic.jpeg
    realistic.jpeg = lambda x, q: x  # the same pipeline with the JPEG stages skipped
    try:
        torch_only = [timed(i) for i in range(repeats)]
    finally:
        realistic.jpeg = original
    return statistics.median(full), statistics.median(torch_only)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4x128,16x256", help="BATCHxHR_CROP,... (scale 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-step", action="store_true", help="skip the training-step column")
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    from srserve.models import SRNet, build_network, get_spec
    from srserve.train import realistic

    torch.set_num_threads(args.threads)
    config = realistic.RealisticDegradation()
    hparams = {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64, "num_block": 4, "num_grow_ch": 32}
    net = build_network("rrdbnet", hparams)
    model = SRNet(get_spec("rrdbnet"), net, 4)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    print(f"threads {args.threads}, median of {args.repeats}")
    print("| batch × HR crop | pipeline | of which JPEG | training step (RRDBNet b4f64) | pipeline / step |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        batch, crop = (int(v) for v in shape.split("x"))
        hr = torch.rand(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0))
        full, torch_only = pipeline_seconds(config, hr, args.repeats)
        lr, _ = config(hr, 4, torch.Generator().manual_seed(0))

        def step():
            loss = F.l1_loss(model(lr), hr)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step_s = float("nan") if args.no_step else median_seconds(step, args.repeats)
        print(f"| {batch} × {crop}² | {full * 1e3:.0f} ms | {(full - torch_only) * 1e3:.0f} ms | "
              f"{step_s * 1e3:.0f} ms | {full / step_s:.3f} |")


if __name__ == "__main__":
    main()
