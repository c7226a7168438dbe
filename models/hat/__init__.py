"""HAT (Chen et al., CVPR 2023): HAT-S, HAT and HAT-L. Keys as in XPixelGroup/HAT's releases
(``params_ema``)."""
from ..spec import ArchSpec, InputConvention
from ..swinir.arch import window_effective_radius
from .arch import HAT, WHOLE_IMAGE, convert_hat, detect_hat, hat_activation_maps

SPEC = ArchSpec(
    name="hat",
    build=HAT,
    detect=detect_hat,
    receptive_radius=lambda h: WHOLE_IMAGE,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams={"num_in_ch": 3, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
                     "compress_ratio": 3, "squeeze_factor": 30, "conv_scale": 0.01, "overlap_ratio": 0.5,
                     "mlp_ratio": 2.0, "qkv_bias": True, "patch_norm": True, "resi_connection": "1conv",
                     "upsampler": "pixelshuffle", "scale": 4, "num_feat": 64, "img_range": 1.0},
    convert=convert_hat,
    description="Hybrid attention transformer: shifted-window + channel attention, overlapping cross-attention",
    tile_alignment=lambda h, scale: int(h["window_size"]),
    effective_radius=window_effective_radius,
    activation_maps=hat_activation_maps,
    license="Apache-2.0 (XPixelGroup/HAT)",
    checkpoints="HAT HAT-S_SRx{2,3,4}.pth, HAT_SRx{2,3,4}.pth, HAT_SRx{2,3,4}_ImageNet-pretrain.pth, "
                "HAT-L_SRx{2,3,4}_ImageNet-pretrain.pth, Real_HAT_GAN_SRx4.pth (params_ema)",
)
__all__ = ["HAT", "SPEC"]
