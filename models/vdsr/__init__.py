"""VDSR (Kim et al., CVPR 2016). Keys as in pytorch-vdsr ``model_epoch_50.pth``."""
from ..spec import ArchSpec, InputConvention
from .arch import VDSR, detect_vdsr, vdsr_receptive_radius

SPEC = ArchSpec(
    name="vdsr",
    build=VDSR,
    detect=detect_vdsr,
    receptive_radius=vdsr_receptive_radius,
    convention=InputConvention(value_range=1.0, color="y", pre_upsample=True),
    default_hparams={"num_layers": 20, "n_feats": 64, "scales": [2, 3, 4]},
    multi_scale=True,
    description="Very deep residual network on the bicubic-upscaled Y channel; one model for all scales",
)
__all__ = ["VDSR", "SPEC"]
