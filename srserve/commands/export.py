"""``srserve export --model NAME``: parity-checked ONNX graphs, TensorRT engines, compiled
(AOTInductor) packages, a Triton repository.

ONNX graphs go to REPO/NAME/onnx/ and are recorded in REPO/NAME/exports.json (sha256, opset,
inputs/outputs with dynamic axes or static shape, the weights they come from, the parity numbers
measured). TensorRT engines (GPU only) and the compiled engine's packages go to the engine cache,
where the server finds them instead of building them at start. A graph, engine or package that
fails its parity check is not written; the command then exits 1 after trying the others.
"""
from __future__ import annotations

import argparse

from .arguments import parse_scales, positive_int

HELP = "export a model to ONNX / TensorRT / compiled packages (parity-checked), optionally for Triton"

EPILOG = """examples:
  srserve export --model edsr                                   fp32 ONNX, every scale
  srserve export --model mdsr --precision fp32,fp16 --self-ensemble --tile 128
  srserve export --model edsr --format onnx,tensorrt --precision fp16 --triton triton_repo   (GPU)
  srserve export --model edsr --format aoti --precision fp16 --tile 128      (the compiled engine, GPU)
artifacts: REPO/NAME/onnx/x{S}[.ensemble|.degradation].{fp32|fp16}[.tile{W}].onnx, REPO/NAME/exports.json;
--tile N adds graphs with a static WxW input, W = N + 2 x (the model's tile margin + its feather width);
TensorRT engines and compiled packages cover windows up to W and batches up to --max-batch: use the
server's SR_TILE_SIZE and SR_MAX_BATCH_TILES so that it finds them (cache: $SR_ENGINE_CACHE)."""

FORMATS = ("onnx", "tensorrt", "aoti")
PRECISIONS = ("fp32", "fp16", "bf16")


def csv_of(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        bad = [t for t in items if t not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
        return items
    return parse


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, help="model name in the repository")
    p.add_argument("--scales", type=parse_scales, metavar="S[,S...]", help="scales to export (default: all)")
    p.add_argument("--format", type=csv_of(FORMATS), default=["onnx"], metavar="F[,F]",
                   help="onnx, tensorrt and/or aoti (default: onnx; tensorrt needs a GPU and builds from the fp32 "
                        "ONNX; aoti: the compiled engine's packages, for --device)")
    p.add_argument("--precision", type=csv_of(PRECISIONS), default=["fp32"], metavar="P[,P]",
                   help="fp32, fp16 (ONNX graph, TensorRT flag, package), bf16 (TensorRT, package); default fp32")
    p.add_argument("--self-ensemble", action="store_true", help="also export the self-ensemble x8 as one graph")
    p.add_argument("--tile", type=positive_int, metavar="N",
                   help="core tile size the server uses: adds static-window ONNX variants and sets the TensorRT "
                        "profile (default profile: the model's default tile)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--max-batch", type=positive_int, default=8,
                   help="TensorRT profile / compiled package / Triton max batch (default 8)")
    p.add_argument("--triton", metavar="DIR", help="also write a Triton model repository to DIR")
    p.add_argument("--triton-instance", choices=["KIND_GPU", "KIND_CPU"], default="KIND_GPU",
                   help="Triton instance_group kind (default KIND_GPU)")
    p.add_argument("--cache-dir", metavar="DIR", help="engine cache (default: $SR_ENGINE_CACHE or ~/.cache/srserve)")
    p.add_argument("--device", default="cuda", help="device of TensorRT builds and packages (default cuda)")
    p.add_argument("--no-tf32", action="store_true", help="TensorRT: strict fp32 layers (no TF32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from srserve.backends.artifacts import ExportError
    from srserve.export.onnx_export import ONNX_PRECISIONS, export_model, plan_jobs
    from srserve.backends.cuda import tile_window
    from srserve.models.repository import Repository

    repository = Repository(args.repository)
    entry = repository.get(args.model)
    scales = args.scales or entry.scales
    unknown = [s for s in scales if s not in entry.scales]
    if unknown:
        raise ExportError(f"model {entry.name!r} serves scales {entry.scales}, not x{unknown[0]}")
    engines, packages = "tensorrt" in args.format, "aoti" in args.format
    if "bf16" in args.precision and not (engines or packages):
        raise ExportError("bf16 exists only as a TensorRT build flag or a compiled package: add --format tensorrt "
                          "or aoti, or use fp16")
    if engines:
        _require_tensorrt(args.device)
    if packages:
        _require_device(args.device)
    onnx_precisions = [p for p in args.precision if p in ONNX_PRECISIONS] if "onnx" in args.format or engines else []
    if engines and "fp32" not in onnx_precisions:
        onnx_precisions.insert(0, "fp32")  # engines are built from the fp32 graph
    model = entry.load(args.device if engines or packages else "cpu", scales)
    windows = {s: tile_window(model, s, args.tile) for s in scales} if args.tile else None
    jobs = plan_jobs(model, scales, onnx_precisions, self_ensemble=args.self_ensemble, windows=windows)
    print(f"exporting {entry.name} ({entry.architecture}) x{','.join(map(str, scales))}: {len(jobs)} ONNX graph(s)"
          f"{' + TensorRT engines' if engines else ''}{' + compiled packages' if packages else ''} into {entry.path}")
    artifacts, failures = export_model(model, entry.path, jobs, opset=args.opset, progress=not args.quiet) \
        if jobs else ([], [])
    built = _build_engines(args, model, entry, scales) if engines and not failures else {}
    compiled = _build_packages(args, model, scales, failures) if packages else 0
    if args.triton:
        from srserve.export.triton import write_triton_repository

        folders = write_triton_repository(args.triton, entry.name, entry.path, artifacts, engines=built,
                                          engine_max_batch=args.max_batch, max_batch_size=args.max_batch,
                                          instance_kind=args.triton_instance)
        print(f"triton repository: {len(folders)} model(s) in {args.triton}")
    print(f"{len(artifacts)} graph(s) written, {len(built)} engine(s) ready, {compiled} package(s) ready, "
          f"{len(failures)} failed")
    for failure in failures:
        print(f"  FAILED {failure}")
    return 1 if failures else 0


def _require_device(device: str) -> None:
    import torch

    from srserve.backends.artifacts import ExportError

    kind = torch.device(device).type
    if kind not in ("cuda", "cpu") or (kind == "cuda" and not torch.cuda.is_available()):
        raise ExportError(f"compiled packages are built for the device they run on: {device} is not available here "
                          "(use --device cpu, or build them on the GPU machine)")


def _build_packages(args, model, scales, failures: list[str]) -> int:
    """Builds (or finds cached) the compiled engine's packages for the server's tile window and
    batch; a package that fails is reported in ``failures``."""
    from pathlib import Path

    import torch

    from srserve.backends.artifacts import default_cache_dir
    from srserve.backends.cuda import tile_window
    from srserve.export.aoti import aoti_cache, load_compiled
    from srserve.models.errors import SRError

    cache = aoti_cache(Path(args.cache_dir or default_cache_dir()))
    ready = 0
    for scale in scales:
        for precision in args.precision:
            try:
                _, info = load_compiled(model, scale, precision, cache=cache, device=torch.device(args.device),
                                        max_side=tile_window(model, scale, args.tile), max_batch=args.max_batch)
            except SRError as exc:
                failures.append(str(exc))
                continue
            print(f"package x{scale} {precision}: {info['package']} ({'built' if info['built_now'] else 'cached'})")
            ready += 1
    return ready


def _require_tensorrt(device: str) -> None:
    """Fails before any work when engines cannot be built here."""
    import torch

    from srserve.export.tensorrt import EngineError, import_tensorrt

    import_tensorrt()
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        raise EngineError("TensorRT engines need a CUDA GPU; export ONNX here and build engines in the GPU image")


def _build_engines(args, model, entry, scales) -> dict:
    """Builds (or finds cached) TensorRT engines from the fp32 graphs just written."""
    from pathlib import Path

    from srserve.backends.artifacts import ExportIndex, default_cache_dir, weights_identity
    from srserve.export.tensorrt import EngineCache, EngineError, load_engine
    import torch

    cache = EngineCache(Path(args.cache_dir or default_cache_dir()) / "tensorrt")
    index = ExportIndex(entry.path, entry.name)
    built = {}
    for scale in scales:
        artifact, why = index.usable("sr", scale, "fp32", weights_identity(model, scale))
        if artifact is None:
            raise EngineError(f"no fp32 ONNX graph for x{scale}: {why}")
        for precision in args.precision:
            _, _, info = load_engine(model, scale, precision, onnx_path=index.path(artifact),
                                     onnx_sha256=artifact.sha256, inputs=artifact.inputs, cache=cache,
                                     device=torch.device(args.device), tile=args.tile, max_batch=args.max_batch,
                                     tf32=not args.no_tf32)
            print(f"engine x{scale} {precision}: {info['engine']} ({'built' if info['built_now'] else 'cached'})")
            built[(scale, precision)] = Path(info["engine"])
    return built
