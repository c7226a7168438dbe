"""Throughput and latency of the inference backends, side by side in one run.

    .venv/bin/python bench/backends.py                 # CPU: torch eager, onnxruntime, OpenVINO fp32/bf16
    .venv/bin/python bench/backends.py --device cuda   # GPU: + fp16, torch.compile, TensorRT (the full GPU sweep, with the compiled engine: bench/gpu_suite.sh)
    .venv/bin/python bench/backends.py --repository model_repository --models edsr:2 --tiles 128 \
        --batch 1 --threads 1,2                          # a shipped model, at 1 and at 2 threads

For each model (EDSR ×2, EDSR ×4, RRDBNet ×4), each tile window, each thread count and each
backend/precision it times ``backend.run`` on a batch of tiles, interleaving all of them round
by round so that load on a shared machine hits them alike, and prints the median latency per
batch, the throughput in LR megapixels/s and in GFLOP/s (``flops_per_lr_pixel``: the model's
convolution FLOPs), plus each backend's speed relative to PyTorch eager fp32 at the same thread
count. It starts by printing the CPU's model and its vector/matrix flags (the bf16 rows run
bf16 only where the CPU has AMX-BF16 or AVX512-BF16: the ``runs`` column says what ran).

Weights are random (speed does not depend on them), at the official sizes on a GPU: EDSR
baseline (16 blocks × 64), RRDBNet 23 blocks; on the CPU RRDBNet is cut to 6 blocks (``--rrdb-blocks``)
so a run stays within minutes on 2 cores. ``--repository`` times that repository's models
instead (``--models NAME:SCALE,...``). Graphs are exported on the fly into a temporary cache
(with the usual parity check) before timing.
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
from srserve.backends.cpu import cpu_flags, cpu_model
from srserve.backends.peaks import device_peak, efficiency
from srserve.export import ExportBuilder
from srserve.models.flops import flops_per_lr_pixel
from srserve.models.registry import build_network
from srserve.models.repository import Repository

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")  # the ones that decide which kernels the engines can use


def models(rrdb_blocks: int) -> dict:
    return {
        "edsr-x2": ("edsr", {"n_resblocks": 16, "n_feats": 64, "scale": 2}, 2),
        "edsr-x4": ("edsr", {"n_resblocks": 16, "n_feats": 64, "scale": 4}, 4),
        "rrdbnet-x4": ("rrdbnet", {"num_block": rrdb_blocks, "num_feat": 64, "num_grow_ch": 32, "scale": 4}, 4),
    }


def variants(device: str) -> list[tuple[str, str, dict]]:
    """(label, backend, options) to compare; the first is the reference."""
    common = [("torch fp32", "torch", {"precision": "fp32"}), ("onnxruntime fp32", "onnxruntime", {"precision": "fp32"})]
    if device != "cuda":
        return common + [("openvino fp32", "openvino", {"precision": "fp32"}),
                         ("openvino bf16", "openvino", {"precision": "bf16"})]
    gpu = common + [("torch fp16", "torch", {"precision": "fp16"}),
                 ("torch compiled fp16", "torch", {"precision": "fp16", "compile": True}),
                 ("onnxruntime fp16", "onnxruntime", {"precision": "fp16"})]
    from srserve.backends.cuda import tensorrt_available

    if tensorrt_available():
        gpu += [("tensorrt fp32", "tensorrt", {}), ("tensorrt fp16", "tensorrt", {"precision": "fp16"})]
    return gpu


def describe_cpu() -> str:
    flags = cpu_flags()
    return f"CPU: {cpu_model()}; flags: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + ', '.join(CPU_FLAGS)}"


def time_call(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(repo: Repository, name: str, scale: int, tiles: list[int], batch: int, rounds: int, device: str,
                cache: Path, threads: list[int | None]) -> list[dict]:
    rows = []
    backends = {}
    for count in threads:
        for label, kind, options in variants(device):
            tile_opt = {"tile": max(tiles)} if kind == "tensorrt" else {}
            backends[(label, count)] = create_backend(name, kind, repository=repo.root, device=device, cache_dir=cache,
                                                      threads=count, force_precision=True, max_batch=batch,
                                                      builder=ExportBuilder(), **{**options, **tile_opt})
    flops = flops_per_lr_pixel(next(iter(backends.values())).model, scale)
    for tile in tiles:
        x = torch.rand(batch, 3, tile, tile, device=device)
        times = {key: [] for key in backends}

        def call(key):
            if key[1]:
                torch.set_num_threads(key[1])  # torch's pool is global; the engines hold their own count
            backends[key].run(x, scale)

        with torch.inference_mode():
            for key in backends:  # warm-up (and compile / autotune) outside the timing
                call(key)
                call(key)
            for _ in range(rounds):
                for key in backends:
                    times[key].append(time_call(lambda: call(key), device))
        for (label, count), samples in times.items():
            median = statistics.median(samples)
            reference = statistics.median(times[(next(iter(times))[0], count)])
            backend = backends[(label, count)]
            pixels = batch * tile * tile
            rows.append({"model": name, "scale": scale, "tile": tile, "batch": batch, "threads": count,
                         "backend": label, "runs": runs(backend), "latency_ms": round(median * 1e3, 1),
                         "lr_mpix_per_s": round(pixels / median / 1e6, 4),
                         "gflop_per_s": round(flops * pixels / median / 1e9, 1),
                         "pct_of_peak": efficiency(flops, pixels / median, device_peak(device, count),
                                                   backend.precision, torch.device(device).type)["pct_of_peak"],
                         "speedup_vs_torch_fp32": round(reference / median, 2),
                         "fp16_fallbacks": backend.fp16_fallbacks})
    return rows


def runs(backend) -> str:
    """What precision actually ran (OpenVINO runs a bf16 request as fp32 without native bf16)."""
    compiled = backend.describe().get("compiled", {})
    return "+".join(sorted({c["runs"] for c in compiled.values()})) if compiled else backend.precision


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tiles", default=None, help="LR tile windows, e.g. 48,96 (default: 48,96 CPU; 128,256 GPU)")
    p.add_argument("--batch", type=int, default=None, help="tiles per batch (default 2 CPU, 8 GPU)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per backend (median reported)")
    p.add_argument("--rrdb-blocks", type=int, default=None, help="RRDBNet depth (default 6 CPU, 23 GPU)")
    p.add_argument("--threads", default=None, help="CPU thread counts to compare, e.g. 1,2 (default: torch's)")
    p.add_argument("--models", default=None, help="edsr-x2,edsr-x4,rrdbnet-x4 (default), or NAME:SCALE,... of "
                   "--repository")
    p.add_argument("--repository", metavar="DIR", help="time this repository's models instead of random weights")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args()
    gpu = args.device == "cuda"
    tiles = [int(t) for t in (args.tiles or ("128,256" if gpu else "48,96")).split(",")]
    batch = args.batch or (8 if gpu else 2)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    if not gpu:
        print(describe_cpu(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="srserve-bench-") as tmp:
        if args.repository:
            repo = Repository(args.repository)
            chosen = [(n, int(s)) for n, s in (m.split(":") for m in (args.models or "edsr:2").split(","))]
        else:
            repo = Repository(Path(tmp) / "repo")
            table = models(args.rrdb_blocks or (23 if gpu else 6))
            chosen = []
            for name in (args.models or "edsr-x2,edsr-x4,rrdbnet-x4").split(","):
                arch, hparams, scale = table[name]
                torch.manual_seed(0)
                repo.add_weights(name, arch, hparams, build_network(arch, hparams).state_dict())
                chosen.append((name, scale))
        for name, scale in chosen:
            rows += bench_model(repo, name, scale, tiles, batch, args.rounds, args.device, Path(tmp) / "cache", threads)
            print_rows([r for r in rows if r["model"] == name])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def print_rows(rows: list[dict]) -> None:
    header = (f"{'model':<11} {'tile':>4} {'batch':>5} {'thr':>3} {'backend':<18} {'runs':<5} {'ms/batch':>9} "
              f"{'LR MP/s':>8} {'GFLOP/s':>8} {'% peak':>7} {'vs torch':>8}")
    print(header)
    for r in rows:
        print(f"{r['model']:<11} {r['tile']:>4} {r['batch']:>5} {r['threads'] or '-':>3} {r['backend']:<18} "
              f"{r['runs']:<5} {r['latency_ms']:>9.1f} {r['lr_mpix_per_s']:>8.4f} {r['gflop_per_s']:>8.1f} "
              f"{(r['pct_of_peak'] or 0):>6.1f}% "
              f"{r['speedup_vs_torch_fp32']:>7.2f}x")
    print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
