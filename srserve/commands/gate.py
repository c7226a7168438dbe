"""``srserve gate cpu-bf16 --model NAME --dataset DIR``: measure whether a model keeps its quality
in reduced precision, and record the verdict in its model.json (``srserve.gate``)."""
from __future__ import annotations

import json

from .arguments import parse_scales

HELP = "measure a model in reduced precision against fp32 and record the verdict in model.json"

EPILOG = """gates:
  cpu-bf16  OpenVINO bf16 vs fp32 on the CPU, whole images of DIR (Set5):
            passes when |Y-PSNR bf16 - fp32| <= 0.02 dB and no pixel differs by more than
            4 levels; needs a CPU with AMX-BF16 or AVX512-BF16. A passing scale runs in
            bf16 by default (precision auto) with the openvino backend on such CPUs."""

GATES = ("cpu-bf16",)


def add_arguments(p) -> None:
    import argparse

    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("gate", choices=GATES, help="which gate to measure")
    p.add_argument("--model", required=True, help="model name in the repository")
    p.add_argument("--scale", type=parse_scales, metavar="S[,S...]", help="scale(s) (default: all the model serves)")
    p.add_argument("--dataset", required=True, metavar="DIR", help="benchmark folder, e.g. ../shared/datasets/"
                   "benchmark/Set5 (layouts: srserve eval --help)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's)")
    p.add_argument("--cache", metavar="DIR", help="engine cache (default: $SR_ENGINE_CACHE or ~/.cache/srserve)")
    p.add_argument("--no-record", action="store_true", help="measure only; leave model.json alone")
    p.add_argument("--json", action="store_true", help="one JSON object per scale, one per line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from srserve.export import ExportBuilder
    from srserve.gate import measure_cpu_bf16, record_cpu_bf16, require_native_bf16
    from srserve.models.repository import Repository

    require_native_bf16()  # before loading anything
    repository = Repository(args.repository)
    scales = args.scale or repository.get(args.model).scales
    results = []
    for scale in scales:
        result = measure_cpu_bf16(repository, args.model, scale, args.dataset, builder=ExportBuilder(),
                                  cache_dir=args.cache, threads=args.threads, progress=not args.quiet)
        if not args.no_record:
            record_cpu_bf16(repository, result)
        results.append(result)
        if args.json:
            print(json.dumps({"model": result.model, "scale": result.scale, **result.verdict()}), flush=True)
    if not args.json:
        print(format_table(results, recorded=not args.no_record))
    return 0


def format_table(results, recorded: bool) -> str:
    header = ("model", "scale", "images", "PSNR fp32", "PSNR bf16", "Δ dB", "max Δ levels", "verdict")
    rows = [header] + [(r.model, f"x{r.scale}", str(r.images), f"{r.psnr_fp32:.3f}", f"{r.psnr_bf16:.3f}",
                        f"{r.delta_db:+.3f}", str(r.max_levels), "bf16-safe" if r.safe else "fp32 only")
                       for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if results:
        r = results[0]
        lines.append(f"{r.engine} on {r.cpu} ({'+'.join(r.cpu_bf16)}), dataset {r.dataset}; "
                     + ("recorded in model.json" if recorded else "not recorded (--no-record)"))
    return "\n".join(lines)
