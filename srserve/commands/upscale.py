"""``srserve upscale``: super-resolve image files with a repository model.

Two forms:

    srserve upscale INPUT... -o OUTDIR --model NAME [--scale S]   files, directories, globs
    srserve upscale IN.png OUT.png --model NAME [--scale S]       one file to one file

Outputs never replace an input (refused even with --overwrite); existing outputs are refused
unless --overwrite. A failing file is reported and skipped; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import glob
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from .arguments import non_negative_int, positive_float, positive_int, tile_size_or_auto

HELP = "upscale image files (tiled, any output scale, alpha/16-bit/ICC kept)"

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".tga", ".ppm", ".pgm"}

EPILOG = """inputs:
  files, directories (their image files, not recursive) and globs ('photos/**/*.jpg', quoted)
output:
  OUTDIR/<input name>.<format>; the single-file form writes OUT (format from its suffix)
scale:
  --scale S runs native scale S; --outscale F / --width W / --height H run the smallest native
  scale >= the request, then an antialiased Lanczos downscale to the exact size
tiling:
  --tile auto (default) uses the whole image when it fits in memory, else the largest tile
  that does; margins come from the architecture's receptive field (crop-stitch = exact) except
  RRDBNet (measured effective field, feathered blending); --exact forces margin >= radius.
  Out of memory halves the tile and retries the image."""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs (or IN OUT)")
    p.add_argument("-o", "--output-dir", metavar="OUTDIR", help="folder for the results (created if missing)")
    p.add_argument("--model", required=True, help="model name in the repository, or 'bicubic'")
    p.add_argument("--scale", type=positive_int, metavar="S", help="native scale (default: the model's only one, "
                   "or chosen from --outscale/--width/--height)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--outscale", type=positive_float, metavar="F", help="any output scale, e.g. 1.5 or 3.2")
    size.add_argument("--width", type=positive_int, metavar="W", help="output width (height keeps the aspect)")
    p.add_argument("--height", type=positive_int, metavar="H", help="output height (with --width: exact size)")
    p.add_argument("--tile", type=tile_size_or_auto, default=None, metavar="N|auto",
                   help="LR tile size; 0 = whole image; auto (default) = from free memory")
    p.add_argument("--tile-margin", type=non_negative_int, metavar="M", help="LR context per tile side (default per model)")
    p.add_argument("--tile-batch", type=positive_int, default=1, metavar="B", help="tiles per backend call")
    p.add_argument("--exact", action="store_true", help="margin >= receptive radius, crop-stitch (= untiled)")
    p.add_argument("--self-ensemble", action="store_true", help="geometric self-ensemble x8 (8x slower)")
    p.add_argument("--alpha", choices=["model", "bicubic"], default="model", help="how to upscale alpha")
    p.add_argument("--format", choices=["png", "jpeg", "webp"], help="output format (default png, or OUT's suffix)")
    p.add_argument("--quality", type=positive_int, metavar="Q", help="JPEG/WebP quality (default 95/90)")
    p.add_argument("--backend", default="torch", help="inference backend (default torch)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--max-pixels", type=positive_int, metavar="N", help="refuse larger inputs (default 8192²)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files, the image files of directories, and glob matches; each file once, in order."""
    from srserve.models.errors import SRError

    found: dict[Path, Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise SRError(f"{pattern}: no image files in this directory")
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise SRError(f"{pattern}: no such file, directory or matching files")
        for m in matches:
            found.setdefault(m.resolve(), m)
    return list(found.values())


def plan_jobs(args) -> tuple[list[Job], str]:
    """Input/output pairs and the output format, checked before any work starts."""
    from srserve.models.errors import SRError
    from srserve.pipeline.imageio import SUFFIXES, output_format

    if args.output_dir is None:
        single = _single_file_form(args.inputs)
        if single is None:
            raise SRError("give an output folder with -o OUTDIR (or use the form: upscale IN OUT)")
        source, target = single
        fmt = output_format(args.format or target.suffix)
        if args.format and output_format(target.suffix) != fmt:
            raise SRError(f"--format {args.format} does not match the output name {target.name}")
        jobs = [Job(source, target)]
    else:
        fmt = output_format(args.format or "png")
        outdir = Path(args.output_dir)
        if outdir.exists() and not outdir.is_dir():
            raise SRError(f"output folder {outdir} is a file")
        jobs = [Job(src, outdir / (src.stem + SUFFIXES[fmt])) for src in expand_inputs(args.inputs)]
    _check_targets(jobs, args.overwrite)
    return jobs, fmt


def _single_file_form(inputs: list[str]) -> tuple[Path, Path] | None:
    if len(inputs) != 2:
        return None
    source, target = Path(inputs[0]), Path(inputs[1])
    if source.is_file() and not target.is_dir() and target.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        return source, target
    return None


def _check_targets(jobs: list[Job], overwrite: bool) -> None:
    from srserve.models.errors import SRError

    sources = {job.source.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        target = job.target.resolve()
        if target in sources:
            raise SRError(f"refusing to overwrite the input {job.source}; choose another output folder or format")
        if target in seen:
            raise SRError(f"{seen[target]} and {job.source} would both be written to {job.target}")
        seen[target] = job.source
        if job.target.exists() and not overwrite:
            raise SRError(f"{job.target} exists; use --overwrite to replace it")


class TileBar:
    """A per-image tile progress bar, opened on the first report (when the tile count is known)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 1:
            return
        if self.bar is None or self.bar.total != total:
            self.close()
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="tiles", unit="tile", leave=False, position=1, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args) -> int:
    from tqdm import tqdm

    from srserve.backends import create_backend
    from srserve.export import ExportBuilder
    from srserve.models.errors import SRError
    from srserve.pipeline.image import native_scales, resolve_output_size, upscale_factor_text, upscale_raster
    from srserve.pipeline.imageio import DEFAULT_MAX_PIXELS, read_image, save_image

    logging.basicConfig(level=logging.WARNING, format="srserve upscale: warning: %(message)s")
    jobs, fmt = plan_jobs(args)
    backend = create_backend(args.model, args.backend, repository=args.repository, device=args.device,
                             builder=ExportBuilder())
    if args.scale and args.scale not in native_scales(backend):
        raise SRError(f"model {args.model!r} serves scales {native_scales(backend)}, not x{args.scale}")
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    tiles = TileBar(enabled=not args.quiet)
    failures = 0
    bar = tqdm(jobs, desc=f"{args.model}", unit="img", file=sys.stderr, disable=args.quiet or len(jobs) < 2)
    for job in bar:
        try:
            raster = read_image(job.source, max_pixels)
            size = resolve_output_size(raster.height, raster.width, native_scales(backend), scale=args.scale,
                                       outscale=args.outscale, out_width=args.width, out_height=args.height)
            result = upscale_raster(backend, raster, size, alpha=args.alpha, tile=args.tile, margin=args.tile_margin,
                                    exact=args.exact, self_ensemble=args.self_ensemble, batch_size=args.tile_batch,
                                    progress=tiles)
            job.target.parent.mkdir(parents=True, exist_ok=True)
            save_image(result, job.target, fmt, args.quality)
            if not args.quiet:
                tqdm.write(f"{job.source} -> {job.target} ({upscale_factor_text(size, raster.height, raster.width)})",
                           file=sys.stderr)
        except SRError as exc:
            failures += 1
            tqdm.write(f"srserve upscale: error: {job.source}: {exc}", file=sys.stderr)
        finally:
            tiles.close()
    if failures:
        print(f"srserve upscale: {failures} of {len(jobs)} images failed", file=sys.stderr)
        return 1
    return 0
