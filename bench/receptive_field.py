"""Effective receptive field, measured as what tiling costs: tiled vs untiled output per margin.

For each margin, the image is tiled (crop-stitch and feathered blending with feather = margin/2)
and compared with the untiled output in 8-bit units: the maximum absolute difference and the
share of pixels that differ by more than 1. The smallest margin whose blend error stays within
±1 is the effective radius ``ArchSpec.effective_radius`` (models/rrdbnet) records.

    python bench/receptive_field.py --arch rrdbnet --hparams '{"scale": 4}' --margins 4,8,12,16,24
    python bench/receptive_field.py --model esrgan --scale 4       # a trained repository model

Images: Set5/Set14 LR crops from ../shared/datasets (``--size`` LR pixels square, centre crop).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srserve.backends import TorchBackend  # noqa: E402
from srserve.models.adapter import SRNet  # noqa: E402
from srserve.models.registry import build_network, get_spec  # noqa: E402
from srserve.models.repository import LoadedModel, ModelEntry, Repository, WeightsFile  # noqa: E402
from srserve.pipeline import upscale_tensor  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "benchmark"


def random_model(arch: str, hparams: dict, seed: int):
    """A randomly initialised network wrapped as a repository model (in memory)."""
    torch.manual_seed(seed)
    spec = get_spec(arch)
    hparams = {**spec.default_hparams, **hparams}
    net = build_network(arch, hparams).eval()
    scales = hparams.get("scales", [hparams.get("scale")])
    entry = ModelEntry(name=f"random-{arch}", path=Path("."), architecture=arch,
                       weights=[WeightsFile(file="-", scales=list(scales), hparams=hparams)])
    nets = {s: SRNet(spec, net, s).eval() for s in scales}
    return LoadedModel(name=entry.name, architecture=arch, nets=nets, entry=entry)


def lr_crops(size: int, count: int) -> list[torch.Tensor]:
    files = sorted((DATASETS / "Set5" / "x2" / "LR").glob("*.png"))[:count]  # the largest LR images
    crops = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
        h, w = a.shape[:2]
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        crops.append(torch.from_numpy(a[top:top + size, left:left + size].copy()).permute(2, 0, 1)[None])
    if not crops:
        raise SystemExit(f"no Set5 images under {DATASETS}")
    return crops


def to8(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.clamp(0, 1).mul(255).numpy()).astype(np.int16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", help="random-initialised architecture (with --hparams)")
    p.add_argument("--hparams", default="{}", help="JSON hyper-parameters for --arch")
    p.add_argument("--model", help="repository model instead of a random one")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--margins", default="4,8,12,16,24,32")
    p.add_argument("--tile", type=int, default=32, help="core size of the tiles")
    p.add_argument("--size", type=int, default=96, help="LR crop side")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model = Repository(args.repository).load(args.model, scales=[args.scale])
    else:
        model = random_model(args.arch, json.loads(args.hparams), args.seed)
    backend = TorchBackend(model)
    crops = lr_crops(args.size, args.images)
    print(f"# {model.name} ({model.architecture}) x{args.scale}, theoretical radius "
          f"{model.receptive_radius(args.scale):.1f} LR px; {len(crops)} Set5 LR crops of {args.size}², "
          f"tiles of {args.tile}")
    start = time.perf_counter()
    refs = [to8(upscale_tensor(backend, x, args.scale, tile=0)) for x in crops]
    print(f"# untiled: {time.perf_counter() - start:.1f} s")
    print(f"{'margin':>6} {'mode':>6} {'max |diff|':>10} {'share >1':>9}")
    for margin in (int(m) for m in args.margins.split(",")):
        for feather in (0, margin // 2):
            diffs = [np.abs(to8(upscale_tensor(backend, x, args.scale, tile=args.tile, margin=margin,
                                               feather=feather)) - ref) for x, ref in zip(crops, refs)]
            worst = max(int(d.max()) for d in diffs)
            share = float(np.mean(np.concatenate([d.ravel() for d in diffs]) > 1))
            print(f"{margin:>6} {'blend' if feather else 'crop':>6} {worst:>10} {share:>9.2e}", flush=True)


if __name__ == "__main__":
    main()
