"""ONNX Runtime CPU session options vs PyTorch eager on EDSR baseline ×2, side by side.

    .venv/bin/python bench/ort_options.py --threads 1 --tile 48 --rounds 7

Profiles what ``OnnxRuntimeBackend`` could change on a CPU: the graph optimisation level
(``ENABLE_ALL`` includes the NCHWc layout transform, ``ENABLE_EXTENDED`` does not), a graph with
static input shape instead of dynamic axes, and spin-waiting of the intra-op pool; PyTorch eager
with the default and the channels_last memory format as the reference. Random weights; one
batch of 2 tiles; every variant timed once per round, rounds interleaved, medians reported, with
the arithmetic rate (GFLOP/s, ``srserve.models.flops``) and its share of the CPU's estimated fp32
peak for the threads used (``srserve.backends.peaks``).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from srserve.backends.peaks import cpu_peak, efficiency, format_efficiency
from srserve.export.graphs import SRGraph
from srserve.export.onnx_export import torch_export
from srserve.models import SRNet, build_network, get_spec
from srserve.models.flops import counted_flops_per_lr_pixel


def session(path: Path, threads: int, level: str, spin: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tile", type=int, default=48)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    srnet = SRNet(get_spec("edsr"), build_network("edsr", {"n_resblocks": 16, "n_feats": 64, "scale": 2}), 2).eval()
    x = torch.rand(args.batch, 3, args.tile, args.tile)
    with tempfile.TemporaryDirectory() as tmp:
        dynamic, static = Path(tmp) / "dynamic.onnx", Path(tmp) / "static.onnx"
        axes = {"image": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "h2", 3: "w2"}}
        torch_export(SRGraph(srnet), (x,), dynamic, ["image"], ["sr"], axes, 17)
        torch_export(SRGraph(srnet), (x,), static, ["image"], ["sr"], {}, 17)
        sessions = {"ort ENABLE_ALL": session(dynamic, args.threads, "ORT_ENABLE_ALL"),
                    "ort ENABLE_EXTENDED": session(dynamic, args.threads, "ORT_ENABLE_EXTENDED"),
                    "ort ENABLE_ALL static graph": session(static, args.threads, "ORT_ENABLE_ALL"),
                    "ort ENABLE_ALL no spinning": session(dynamic, args.threads, "ORT_ENABLE_ALL", spin=False)}
        feeds = {"image": x.numpy()}
        channels_last = copy.deepcopy(srnet).to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        runs = {"torch eager": lambda: srnet(x), "torch channels_last": lambda: channels_last(x_last)}
        runs.update({label: (lambda s=s: s.run(None, feeds)) for label, s in sessions.items()})
        times = {label: [] for label in runs}
        with torch.inference_mode():
            for run in runs.values():
                run(), run()
            for _ in range(args.rounds):
                for label, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[label].append(time.perf_counter() - start)
    reference = statistics.median(times["torch eager"])
    flops, peak = counted_flops_per_lr_pixel(srnet), cpu_peak(args.threads)
    print(f"EDSR x2, batch {args.batch}, tile {args.tile}, {args.threads} thread(s), {args.rounds} rounds; "
          f"peak {peak.source}")
    for label, samples in times.items():
        median = statistics.median(samples)
        rate = efficiency(flops, args.batch * args.tile ** 2 / median, peak, "fp32", "cpu")
        print(f"{label:30s} {median * 1e3:9.1f} ms  {reference / median:5.2f}x torch eager  "
              f"{format_efficiency(rate, 'cpu')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
