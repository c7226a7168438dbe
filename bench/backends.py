"""Throughput and latency of the inference backends, side by side in one run.

    .venv/bin/python bench/backends.py                 # CPU: torch eager vs onnxruntime, fp32
    .venv/bin/python bench/backends.py --device cuda   # GPU: + fp16, torch.compile, compiled, TensorRT

For each model (EDSR ×2, EDSR ×4, RRDBNet ×4), each tile window and each backend/precision it
times ``backend.run`` on a batch of tiles, interleaving the backends round by round so that
load on a shared machine hits them alike, and prints the median latency per batch and the
throughput in LR megapixels/s, the arithmetic rate (GFLOP/s on a CPU, TFLOP/s on a GPU:
``srserve.models.flops`` × LR pixels/s) and its share of the device's peak for the precision run
(``srserve.backends.peaks``), plus each backend's speed relative to PyTorch eager fp32.

Weights are random (speed does not depend on them), at the official sizes on a GPU: EDSR
baseline (16 blocks × 64), RRDBNet 23 blocks; on the CPU RRDBNet is cut to 6 blocks (``--rrdb-blocks``)
so a run stays within minutes on 2 cores. Graphs are exported on the fly into a temporary
cache (with the usual parity check) before timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from srserve.backends import create_backend
from srserve.backends.peaks import device_peak, efficiency
from srserve.export import ExportBuilder
from srserve.models.flops import flops_per_lr_pixel
from srserve.models.registry import build_network
from srserve.models.repository import Repository


def models(rrdb_blocks: int) -> dict:
    return {
        "edsr-x2": ("edsr", {"n_resblocks": 16, "n_feats": 64, "scale": 2}, 2),
        "edsr-x4": ("edsr", {"n_resblocks": 16, "n_feats": 64, "scale": 4}, 4),
        "rrdbnet-x4": ("rrdbnet", {"num_block": rrdb_blocks, "num_feat": 64, "num_grow_ch": 32, "scale": 4}, 4),
    }


def variants(device: str) -> list[tuple[str, str, dict]]:
    """(label, backend, options) to compare; the first is the reference."""
    common = [("torch fp32", "torch", {}), ("onnxruntime fp32", "onnxruntime", {})]
    if device != "cuda":
        return common + [("torch fp32 channels_last", "torch", {"channels_last": True})]
    gpu = common + [("torch fp16", "torch", {"precision": "fp16"}),
                 ("torch compiled fp16", "torch", {"precision": "fp16", "compile": True}),
                 ("onnxruntime fp16", "onnxruntime", {"precision": "fp16"})]
    from srserve.backends.cuda import compile_toolchain_missing, tensorrt_available

    if not compile_toolchain_missing("cuda"):
        gpu += [("compiled fp16", "compiled", {"precision": "fp16"})]
    if tensorrt_available():
        gpu += [("tensorrt fp32", "tensorrt", {}), ("tensorrt fp16", "tensorrt", {"precision": "fp16"})]
    return gpu


def time_call(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(repo: Repository, name: str, scale: int, tiles: list[int], batch: int, rounds: int, device: str,
                cache: Path, threads: int | None) -> list[dict]:
    rows = []
    backends = {}
    peak = device_peak(device, threads)
    for label, kind, options in variants(device):
        if kind == "compiled":  # CUDA graphs for exactly the windows timed here
            from srserve.backends.compiled_backend import CompiledBackend

            backends[label] = CompiledBackend(repo.load(name, "cpu"), device, options["precision"], cache_dir=cache,
                                              builder=ExportBuilder(), max_batch=batch, windows=tiles,
                                              force_precision=True)
            continue
        tile_opt = {"tile": max(tiles)} if kind == "tensorrt" else {}
        backends[label] = create_backend(name, kind, repository=repo.root, device=device, cache_dir=cache,
                                         threads=threads, force_precision=True, max_batch=batch, builder=ExportBuilder(),
                                         **{**options, **tile_opt})
    for tile in tiles:
        x = torch.rand(batch, 3, tile, tile, device=device)
        times = {label: [] for label in backends}
        with torch.inference_mode():
            for backend in backends.values():  # warm-up (and compile / autotune) outside the timing
                backend.run(x, scale)
                backend.run(x, scale)
            for _ in range(rounds):
                for label, backend in backends.items():
                    times[label].append(time_call(lambda: backend.run(x, scale), device))
        reference = statistics.median(times[next(iter(times))])
        flops = flops_per_lr_pixel(next(iter(backends.values())).model, scale)
        for label, samples in times.items():
            median = statistics.median(samples)
            rate = efficiency(flops, batch * tile * tile / median, peak, backends[label].precision, device)
            rows.append({"model": name, "scale": scale, "tile": tile, "batch": batch, "backend": label,
                         "latency_ms": round(median * 1e3, 1), "lr_mpix_per_s": round(batch * tile * tile / median / 1e6, 4),
                         "speedup_vs_torch_fp32": round(reference / median, 2), "tflops": rate["tflops"],
                         "peak_kind": rate["peak_kind"], "pct_of_peak": rate["pct_of_peak"],
                         "fp16_fallbacks": backends[label].fp16_fallbacks})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tiles", default=None, help="LR tile windows, e.g. 48,96 (default: 48,96 CPU; 128,256 GPU)")
    p.add_argument("--batch", type=int, default=None, help="tiles per batch (default 2 CPU, 8 GPU)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per backend (median reported)")
    p.add_argument("--rrdb-blocks", type=int, default=None, help="RRDBNet depth (default 6 CPU, 23 GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both torch and onnxruntime")
    p.add_argument("--models", default="edsr-x2,edsr-x4,rrdbnet-x4")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args()
    gpu = args.device == "cuda"
    tiles = [int(t) for t in (args.tiles or ("128,256" if gpu else "48,96")).split(",")]
    batch = args.batch or (8 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = models(args.rrdb_blocks or (23 if gpu else 6))
    rows = []
    with tempfile.TemporaryDirectory(prefix="srserve-bench-") as tmp:
        repo = Repository(Path(tmp) / "repo")
        for name in args.models.split(","):
            arch, hparams, scale = table[name]
            torch.manual_seed(0)
            repo.add_weights(name, arch, hparams, build_network(arch, hparams).state_dict())
            rows += bench_model(repo, name, scale, tiles, batch, args.rounds, args.device, Path(tmp) / "cache",
                                args.threads)
            print_rows([r for r in rows if r["model"] == name], args.device)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def print_rows(rows: list[dict], device: str = "cpu") -> None:
    unit, factor = ("GFLOP/s", 1e3) if device == "cpu" else ("TFLOP/s", 1.0)
    header = (f"{'model':<11} {'tile':>4} {'batch':>5} {'backend':<22} {'ms/batch':>9} {'LR MP/s':>8} {'vs torch':>8} "
              f"{unit:>9} {'% peak':>7}")
    print(header)
    for r in rows:
        share = f"{r['pct_of_peak']:>6.2f}%" if r["pct_of_peak"] is not None else f"{'-':>7}"
        print(f"{r['model']:<11} {r['tile']:>4} {r['batch']:>5} {r['backend']:<22} {r['latency_ms']:>9.1f} "
              f"{r['lr_mpix_per_s']:>8.4f} {r['speedup_vs_torch_fp32']:>7.2f}x {r['tflops'] * factor:>9.2f} {share} "
              f"({r['peak_kind']})")
    print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
