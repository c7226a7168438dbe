"""Real-ESRGAN degradation pipeline (train/realistic.py) on the CPU or a GPU: its time per batch
beside the training step it feeds, so one can see whether it would starve the network.

For each (batch, HR crop) it times, with one thread by default: the whole pipeline with
Pillow's JPEG (per sample, on the CPU) and with train/jpeg.py's (batched, on the batch's
device), the pipeline without its JPEG stages, and one L1 training step (forward + backward +
Adam) of RRDBNet b4f64 (the ``realesrnet`` size) on the resulting LR batch. Median of
``--repeats`` runs each (run i of every variant draws with seed i).

    python bench/degradation.py                            # batch 4 x 128 px and 16 x 256 px
    python bench/degradation.py --shapes 4x128 --repeats 5 --threads 2
    python bench/degradation.py --device cuda --amp bf16 --shapes 32x192 --config train/configs/gpu/realesrnet.yaml
"""
from __future__ import annotations

import argparse
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipeline_seconds(config, hr, repeats: int, sync) -> dict[str, float]:
    """Median seconds of the pipeline with Pillow's JPEG, with train/jpeg.py's, and with its JPEG
    stages skipped; run i of every variant uses seed i, so all see the same kernels, sizes and
    noise (draws differ between runs)."""
    from dataclasses import replace

    import torch

    from srserve.train import realistic

    def timed(variant, seed: int) -> float:
        sync()
        start = time.perf_counter()
        variant(hr, 4, torch.Generator().manual_seed(seed))  # CPU draws, as the recipe
        sync()
        return time.perf_counter() - start

    variants = {"pillow": replace(config, jpeg="pillow"), "torch": replace(config, jpeg="torch")}
    times = {name: statistics.median([timed(v, i) for i in range(repeats)]) for name, v in variants.items()}
    original = realistic.jpeg
    realistic.jpeg = lambda x, q, engine="pillow": x  # the same pipeline with the JPEG stages skipped
    try:
        times["none"] = statistics.median([timed(variants["pillow"], i) for i in range(repeats)])
    finally:
        realistic.jpeg = original
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4x128,16x256", help="BATCHxHR_CROP,... (scale 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the batch and the network are")
    p.add_argument("--config", help="a training config whose data.degradation to time (default: Real-ESRGAN's ranges)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="the training step under bf16 autocast")
    p.add_argument("--no-step", action="store_true", help="skip the training-step column")
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    from srserve.models import SRNet, build_network, get_spec
    from srserve.train import realistic

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    settings = None
    if args.config:
        from srserve.train.config import load_config

        settings = load_config(args.config).data.get("degradation")
    config = realistic.RealisticDegradation.from_config(settings)
    hparams = {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64, "num_block": 4, "num_grow_ch": 32}
    net = build_network("rrdbnet", hparams).to(device)
    model = SRNet(get_spec("rrdbnet"), net, 4)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    print(f"{device.type}, threads {args.threads}, median of {args.repeats}, degradation "
          f"{args.config or 'Real-ESRGAN defaults'}, step amp {args.amp}")
    print("| batch × HR crop | pipeline, Pillow JPEG | pipeline, torch JPEG | pipeline without JPEG | "
          "training step (RRDBNet b4f64) | Pillow / step | torch / step |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        batch, crop = (int(v) for v in shape.split("x"))
        hr = torch.rand(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0)).to(device)
        times = pipeline_seconds(config, hr, args.repeats, sync)
        lr, _ = config(hr, 4, torch.Generator().manual_seed(0))

        def step():
            with torch.autocast(device.type, torch.bfloat16, enabled=args.amp == "bf16"):
                loss = F.l1_loss(model(lr), hr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()

        step_s = float("nan") if args.no_step else median_seconds(step, args.repeats)
        print(f"| {batch} × {crop}² | {times['pillow'] * 1e3:.1f} ms | {times['torch'] * 1e3:.1f} ms | "
              f"{times['none'] * 1e3:.1f} ms | {step_s * 1e3:.1f} ms | {times['pillow'] / step_s:.3f} | "
              f"{times['torch'] / step_s:.3f} |")


if __name__ == "__main__":
    main()
