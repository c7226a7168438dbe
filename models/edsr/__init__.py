"""EDSR (Lim et al., CVPR-W 2017). Keys as in EDSR-PyTorch ``edsr_x{2,3,4}-*.pt``."""
from ..common import residual_trunk_activation_maps
from ..spec import ArchSpec, InputConvention, PaperResult
from .arch import EDSR, detect_edsr, edsr_receptive_radius

PAPER_PSNR = {("Set5", 2): 38.11, ("Set5", 3): 34.65, ("Set5", 4): 32.46,
              ("Set14", 2): 33.92, ("Set14", 3): 30.52, ("Set14", 4): 28.80}

SPEC = ArchSpec(
    name="edsr",
    build=EDSR,
    detect=detect_edsr,
    receptive_radius=edsr_receptive_radius,
    convention=InputConvention(value_range=255.0, color="rgb"),
    default_hparams={"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0, "scale": 2},
    description="Enhanced deep residual network; baseline r16f64 or paper r32f256 (res_scale 0.1)",
    activation_maps=lambda h, scale: residual_trunk_activation_maps(h.get("n_feats", 64), scale, 5),
    paper=PaperResult("EDSR", PAPER_PSNR),
    license="MIT (EDSR-PyTorch)",
    checkpoints="EDSR-PyTorch edsr_baseline_x{2,3,4}-*.pt, edsr_x{2,3,4}-*.pt",
)
__all__ = ["EDSR", "SPEC"]
