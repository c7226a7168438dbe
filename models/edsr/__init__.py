"""EDSR (Lim et al., CVPR-W 2017). Keys as in EDSR-PyTorch ``edsr_x{2,3,4}-*.pt``."""
from ..spec import ArchSpec, InputConvention
from .arch import EDSR, detect_edsr, edsr_receptive_radius

SPEC = ArchSpec(
    name="edsr",
    build=EDSR,
    detect=detect_edsr,
    receptive_radius=edsr_receptive_radius,
    convention=InputConvention(value_range=255.0, color="rgb"),
    default_hparams={"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0, "scale": 2},
    description="Enhanced deep residual network; baseline r16f64 or paper r32f256 (res_scale 0.1)",
)
__all__ = ["EDSR", "SPEC"]
