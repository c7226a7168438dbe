"""VDSR (Kim et al., CVPR 2016). Keys as in pytorch-vdsr ``model_epoch_50.pth``."""
from ..spec import ArchSpec, InputConvention, PaperResult
from .arch import VDSR, detect_vdsr, vdsr_receptive_radius

PAPER_PSNR = {("Set5", 2): 37.53, ("Set5", 3): 33.66, ("Set5", 4): 31.35,
              ("Set14", 2): 33.03, ("Set14", 3): 29.77, ("Set14", 4): 28.01}

SPEC = ArchSpec(
    name="vdsr",
    build=VDSR,
    detect=detect_vdsr,
    receptive_radius=vdsr_receptive_radius,
    convention=InputConvention(value_range=1.0, color="y", pre_upsample=True),
    default_hparams={"num_layers": 20, "n_feats": 64, "scales": [2, 3, 4]},
    multi_scale=True,
    description="Very deep residual network on the bicubic-upscaled Y channel; one model for all scales",
    activation_maps=lambda h, scale: (3 * h.get("n_feats", 64) + 12) * scale * scale + 3,
    # the input and output convolutions see the image itself: in bf16 they cost 7-16 levels
    # and 0.02-0.07 dB on Set5 (BENCHMARKS.md); the 18 inner layers alone pass the CPU bf16 gate
    cpu_bf16_body=("residual_layer",),
    paper=PaperResult("VDSR", PAPER_PSNR),
    license="MIT (twtygqyy/pytorch-vdsr)",
    checkpoints="pytorch-vdsr model_epoch_50.pth (a pickled module, read without running pickled code)",
)
__all__ = ["VDSR", "SPEC"]
