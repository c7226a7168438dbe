"""``srserve interpolate A B --alpha 0.8 --name OUT``: ESRGAN network interpolation.

θ = (1 − α)·θ_A + α·θ_B for two repository models of the same architecture and shapes (e.g. the
PSNR-oriented and the GAN-fine-tuned RRDBNet): α trades PSNR (0) for perceptual quality (1).
"""
from __future__ import annotations

HELP = "blend the weights of two models of the same architecture: (1-alpha)*A + alpha*B"


def add_arguments(p) -> None:
    p.add_argument("model_a", metavar="A", help="repository model at alpha = 0 (e.g. the PSNR-oriented one)")
    p.add_argument("model_b", metavar="B", help="repository model at alpha = 1 (e.g. the GAN one)")
    p.add_argument("--alpha", type=float, required=True, help="weight of B, in [0, 1]")
    p.add_argument("--name", required=True, help="name of the new repository model")


def interpolate_state_dicts(a: dict, b: dict, alpha: float) -> dict:
    """Linear blend of matching tensors; integer buffers (e.g. BN counters) are taken from A."""
    if a.keys() != b.keys():
        raise ValueError("the two models have different parameters")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise ValueError(f"{k} has shape {tuple(va.shape)} in A but {tuple(vb.shape)} in B")
        out[k] = (1 - alpha) * va + alpha * vb if va.is_floating_point() else va.clone()
    return out


def run(args) -> int:
    from safetensors.torch import load_file

    from srserve.models.errors import SRError
    from srserve.models.repository import Repository

    if not 0.0 <= args.alpha <= 1.0:
        raise SRError(f"--alpha must be in [0, 1], got {args.alpha}")
    repo = Repository(args.repository)
    a, b = repo.get(args.model_a), repo.get(args.model_b)
    if a.architecture != b.architecture or a.scales != b.scales:
        raise SRError(f"{a.name} ({a.architecture} x{a.scales}) and {b.name} ({b.architecture} x{b.scales}) differ")
    for wa in a.weights:
        wb = b.weights_for(wa.scales[0])
        if wa.hparams != wb.hparams:
            raise SRError(f"hyper-parameters differ at x{wa.scales[0]}: {wa.hparams} vs {wb.hparams}")
        try:
            blended = interpolate_state_dicts(load_file(str(a.path / wa.file)), load_file(str(b.path / wb.file)), args.alpha)
        except ValueError as exc:
            raise SRError(str(exc)) from None
        source = {"interpolated": {"a": a.name, "b": b.name, "alpha": args.alpha, "a_sha256": wa.sha256, "b_sha256": wb.sha256}}
        repo.add_weights(args.name, a.architecture, wa.hparams, blended, source=source,
                         description=f"{a.name} and {b.name} interpolated at alpha={args.alpha}", file=wa.file)
    print(f"wrote {repo.root / args.name} = {1 - args.alpha:g}*{a.name} + {args.alpha:g}*{b.name}")
    return 0
