"""``srserve import CHECKPOINT --name NAME``: an official (or own) checkpoint into the repository.

Reads the file safely (``srserve.models.checkpoint``), detects the architecture and its
hyper-parameters, loads the weights strictly, and writes ``REPO/NAME/`` (safetensors + model.json
with the source file's name and sha256).
"""
from __future__ import annotations

HELP = "import a checkpoint (.pt/.pth/.safetensors) into the model repository"

EPILOG = """supported checkpoints (official file names; every accepted file: srserve list --architectures):
  EDSR-PyTorch   edsr_baseline_x{2,3,4}-*.pt, edsr_x{2,3,4}-*.pt, mdsr_baseline-*.pt, mdsr-*.pt
  ESRGAN         RRDB_ESRGAN_x4.pth, RRDB_PSNR_x4.pth (and *_old_arch.pth)
  Real-ESRGAN    RealESRGAN_x4plus.pth, RealESRGAN_x2plus.pth, BasicSR params/params_ema files
                 realesr-general-x4v3.pth, realesr-animevideov3.pth (compact, SRVGGNetCompact)
  DASR           model_600.pt (LongguangWang/DASR)
  pytorch-vdsr   model_epoch_50.pth (a pickled module, read without running pickled code)
  SwinIR         001_classicalSR_*, 002_lightweightSR_*, 003_realSR_* (.pth, params / params_ema)
  HAT            HAT-S_SRx*.pth, HAT_SRx*.pth, HAT-L_SRx*.pth, Real_HAT_GAN_SRx4.pth
  SPAN           spanx{2,4}_ch{48,52}.pth
formats: safetensors, PyTorch zip and legacy files; 'module.' prefixes and trainer wrappers are removed."""


def add_arguments(p) -> None:
    import argparse

    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file")
    p.add_argument("--name", required=True, help="model name in the repository (letters, digits, '.', '_', '-')")
    p.add_argument("--arch", default="auto", metavar="auto|ARCH",
                   help="architecture (default: detected from the weights; `srserve list --architectures` lists them)")
    p.add_argument("--scale", type=int, metavar="S",
                   help="check the detected scale (VDSR, which is scale-agnostic: serve only this scale)")
    p.add_argument("--hparams", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="hyper-parameters the weights cannot show, e.g. act_type=leakyrelu for a compact model "
                        "without PReLU (values: JSON numbers/lists/booleans, or plain strings)")
    p.add_argument("--license", metavar="TEXT", help="licence of the weights, stored in model.json")
    p.add_argument("--provenance", metavar="TEXT", help="where the weights come from, stored in model.json")
    p.add_argument("--description", metavar="TEXT", help="one-line description (default: the architecture's)")


def run(args) -> int:
    from pathlib import Path

    from srserve.models.checkpoint import load_checkpoint
    from srserve.models.registry import get_spec, load_network, scales_of
    from srserve.models.repository import Repository, sha256_file

    if args.arch != "auto":
        get_spec(args.arch)  # unknown names fail here, with the list of known ones
    path = Path(args.checkpoint)
    overrides = parse_hparams(args.hparams or [])
    state = load_checkpoint(path)
    arch, hparams, net = load_network(state, args.arch, overrides)
    hparams = apply_scale(arch, hparams, args.scale)
    n_params = sum(p.numel() for p in net.parameters())
    given = f" (given: {', '.join(overrides)})" if overrides else ""
    print(f"detected: {arch} {format_hparams(hparams)}{given}")
    print(f"scales: {', '.join(f'x{s}' for s in scales_of(arch, hparams))}; "
          f"{n_params:,} parameters ({n_params / 1e6:.2f} M)")
    entry = Repository(args.repository).add_weights(
        args.name, arch, hparams, net.state_dict(), source={"file": path.name, "sha256": sha256_file(path)},
        description=args.description or "", license=args.license, provenance=args.provenance,
    )
    written = next(w.file for w in entry.weights if set(w.scales) == set(scales_of(arch, hparams)))
    print(f"imported {args.name!r} -> {entry.path / written} (model serves {', '.join(f'x{s}' for s in entry.scales)})")
    return 0


def apply_scale(arch: str, hparams: dict, scale: int | None) -> dict:
    """``--scale``: a scale-agnostic network (pre-upsampled input, VDSR) is restricted to it;
    otherwise it must be one the weights were trained for."""
    from srserve.models.checkpoint import CheckpointError
    from srserve.models.registry import get_spec, scales_of

    if scale is None:
        return hparams
    if scale < 1:
        raise CheckpointError(f"--scale must be a positive integer, got {scale}")
    if get_spec(arch).convention.pre_upsample:
        if scale < 2:
            raise CheckpointError(f"--scale {scale}: a pre-upsampling network like {arch} needs a scale of 2 or more")
        return {**hparams, "scales": [scale]}
    available = scales_of(arch, hparams)
    if scale not in available:
        raise CheckpointError(f"--scale {scale} does not match the checkpoint: this {arch} serves "
                               f"{', '.join(f'x{s}' for s in available)}")
    return hparams


def parse_hparams(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> dict; a value is JSON when it parses (3, 0.5, [6, 6], true), else text."""
    import json

    from srserve.models.errors import SRError

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise SRError(f"--hparams takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def format_hparams(hparams: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in hparams.items())
