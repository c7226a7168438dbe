"""Tiled vs untiled inference on large images (CPU): time ratio and peak RSS, side by side.

Every variant (image size × tile size) runs in its own subprocess, so its peak RSS
(``ru_maxrss``) is its own; the untiled run is skipped where the pipeline's memory estimate
says it cannot fit (that is what tiling is for). The model is randomly initialised — runtime
and memory do not depend on the weights — by default EDSR with 4 blocks × 16 features at x4,
small enough that the untiled 2048² x4 run fits in this machine's memory.

    python bench/tiling.py                          # sizes 1024,2048,3072; untiled and the default tile
    python bench/tiling.py --sizes 2048 --tiles 0,128,256 --timeout 300

Columns: ``time`` wall seconds of ``upscale_tensor`` (model loaded, input in memory); ``ratio``
time over the untiled time at the same size; ``peak RSS`` the subprocess's maximum resident
set; ``above base`` its growth over the RSS before inference; ``estimate`` the pipeline's
activation estimate for the largest window (``memory.bytes_per_lr_pixel``) plus the output;
``GFLOP/s`` the useful arithmetic rate (LR pixels × ``srserve.models.flops``, the tiles' overlap
not counted) and its share of the CPU's estimated fp32 peak (``srserve.backends.peaks``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_HPARAMS = {"n_resblocks": 4, "n_feats": 16, "scale": 4}


def worker(args) -> None:
    import torch

    from bench.receptive_field import random_model
    from srserve.backends import TorchBackend
    from srserve.pipeline import TilingRequest, plan_for, upscale_tensor

    torch.set_num_threads(args.threads)
    backend = TorchBackend(random_model(args.arch, json.loads(args.hparams), 0))
    x = torch.rand(1, 3, args.size, args.size)
    plan = plan_for(backend, args.size, args.size, args.scale, TilingRequest(tile=args.tile))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    y = upscale_tensor(backend, x, args.scale, tile=args.tile)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "base": base, "tiles": len(plan),
                      "window": list(plan.tile_shape), "margin": plan.margin, "out": list(y.shape)}))


def estimate_bytes(args, size: int, tile: int) -> tuple[int, list[int]]:
    """The pipeline's own estimate: activations of the largest window plus input and output."""
    import torch

    from bench.receptive_field import random_model
    from srserve.backends import TorchBackend
    from srserve.pipeline import TilingRequest, plan_for
    from srserve.pipeline.memory import bytes_per_lr_pixel

    backend = TorchBackend(random_model(args.arch, json.loads(args.hparams), 0))
    plan = plan_for(backend, size, size, args.scale, TilingRequest(tile=tile))
    th, tw = plan.tile_shape
    io_bytes = 4 * 3 * size * size * (1 + args.scale**2)
    return int(bytes_per_lr_pixel(backend, args.scale) * th * tw + io_bytes), [th, tw]


def run_variant(args, size: int, tile: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--arch", args.arch, "--hparams", args.hparams,
           "--scale", str(args.scale), "--size", str(size), "--tile", str(tile), "--threads", str(args.threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {args.timeout}s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="edsr")
    p.add_argument("--hparams", default=json.dumps(DEFAULT_HPARAMS))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--sizes", default="1024,2048,3072", help="LR image sides")
    p.add_argument("--tiles", default="0,default", help="tile sizes: 0 = untiled, 'default' = per model")
    p.add_argument("--timeout", type=int, default=900, help="seconds per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from bench.receptive_field import random_model
    from srserve.backends.peaks import cpu_peak, efficiency
    from srserve.models.flops import flops_per_lr_pixel
    from srserve.pipeline.tiling import default_tiling

    model = random_model(args.arch, json.loads(args.hparams), 0)
    default_tile = default_tiling(model, args.scale).tile_size
    flops, peak = flops_per_lr_pixel(model, args.scale), cpu_peak(args.threads)
    tiles = [default_tile if t == "default" else int(t) for t in args.tiles.split(",")]
    print(f"# {args.arch} {args.hparams} x{args.scale}, random weights; {args.threads} threads; "
          f"MemAvailable {mib(available_bytes())}; {os.cpu_count()} CPUs")
    header = f"{'LR size':>9} {'tile':>6} {'window':>9} {'tiles':>6} {'time':>8} {'ratio':>6} {'peak RSS':>11} " \
             f"{'above base':>11} {'estimate':>11} {'GFLOP/s':>8} {'% peak':>7}"
    print(header)
    for size in (int(s) for s in args.sizes.split(",")):
        untiled = None
        for tile in tiles:
            estimate, window = estimate_bytes(args, size, tile)
            name = "untiled" if tile == 0 else str(tile)
            if tile == 0 and estimate > available_bytes():
                print(f"{size:>8}² {name:>6} {'x'.join(map(str, window)):>9} {'-':>6} "
                      f"{'skipped: the estimate exceeds MemAvailable':>50} {mib(estimate):>11}", flush=True)
                continue
            r = run_variant(args, size, tile)
            if "error" in r:
                print(f"{size:>8}² {name:>6} {'x'.join(map(str, window)):>9} {'-':>6} {r['error']}", flush=True)
                continue
            if tile == 0:
                untiled = r["seconds"]
            ratio = f"{r['seconds'] / untiled:.2f}" if untiled else "n/a"
            rate = efficiency(flops, size * size / r["seconds"], peak, "fp32", "cpu")
            print(f"{size:>8}² {name:>6} {'x'.join(map(str, r['window'])):>9} {r['tiles']:>6} {r['seconds']:>7.1f}s "
                  f"{ratio:>6} {mib(r['peak']):>11} {mib(r['peak'] - r['base']):>11} {mib(estimate):>11} "
                  f"{rate['tflops'] * 1e3:>8.2f} {rate['pct_of_peak']:>6.1f}%", flush=True)


if __name__ == "__main__":
    main()
