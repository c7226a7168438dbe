"""HAT (Chen et al., CVPR 2023): HAT-S, HAT and HAT-L. Keys as in XPixelGroup/HAT's releases
(``params_ema``)."""
from ..spec import ArchSpec, InputConvention
from ..swinir.arch import window_alignment, window_effective_radius
from .arch import DEFAULTS, HAT, WHOLE_IMAGE, convert_hat, detect_hat, hat_activation_maps

SPEC = ArchSpec(
    name="hat",
    build=HAT,
    detect=detect_hat,
    receptive_radius=lambda h: WHOLE_IMAGE,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams=DEFAULTS,
    convert=convert_hat,
    description="Hybrid attention transformer: shifted-window + channel attention, overlapping cross-attention",
    tile_alignment=lambda h, scale: window_alignment({**DEFAULTS, **h}, scale),
    effective_radius=lambda h, scale: window_effective_radius({**DEFAULTS, **h}, scale),
    activation_maps=hat_activation_maps,
    license="Apache-2.0 (XPixelGroup/HAT)",
    checkpoints="HAT HAT-S_SRx{2,3,4}.pth, HAT_SRx{2,3,4}.pth, HAT_SRx{2,3,4}_ImageNet-pretrain.pth, "
                "HAT-L_SRx{2,3,4}_ImageNet-pretrain.pth, Real_HAT_GAN_SRx4.pth (params_ema)",
)
__all__ = ["HAT", "SPEC"]
