"""MDSR (Lim et al., 2017): shared body, per-scale 5x5 pre-process blocks and upsamplers.
Keys as in EDSR-PyTorch ``mdsr-*.pt`` / ``mdsr_baseline-*.pt``."""
from ..common import residual_trunk_activation_maps
from ..edsr import PAPER_PSNR as EDSR_PAPER_PSNR
from ..spec import ArchSpec, InputConvention, PaperResult, SharedBody
from .arch import MDSR, detect_mdsr, mdsr_receptive_radius


def split_shared_body(net: MDSR) -> SharedBody:
    return SharedBody(head=net.head_forward, body=net.body_forward, tail=net.tail_forward)


SPEC = ArchSpec(
    name="mdsr",
    build=MDSR,
    detect=detect_mdsr,
    receptive_radius=mdsr_receptive_radius,
    convention=InputConvention(value_range=255.0, color="rgb"),
    default_hparams={"n_resblocks": 16, "n_feats": 64, "scales": [2, 3, 4]},
    multi_scale=True,
    description="Multi-scale deep SR: one shared body, scale-specific heads chosen per call",
    activation_maps=lambda h, scale: residual_trunk_activation_maps(h.get("n_feats", 64), scale, 5),
    shared_body=split_shared_body,
    # the whole graph in bf16 loses 0.022-0.023 dB on Set5 at x2/x4; with the image-side head and
    # tail convolutions in fp32 it passes the CPU bf16 gate at the same speed (BENCHMARKS.md)
    cpu_bf16_body=("pre_process", "body", "upsample"),
    paper=PaperResult("EDSR (MDSR has no Set5 table; EDSR shown)", EDSR_PAPER_PSNR),
    license="MIT (EDSR-PyTorch)",
    checkpoints="EDSR-PyTorch mdsr_baseline-*.pt, mdsr-*.pt",
)
__all__ = ["MDSR", "SPEC"]
