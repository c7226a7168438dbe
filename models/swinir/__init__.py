"""SwinIR (Liang et al., ICCV-W 2021). Keys as in JingyunLiang/SwinIR's classical
(``params``), lightweight (``params``) and real-world (``params_ema``) releases."""
from ..spec import ArchSpec, InputConvention
from .arch import (DEFAULTS, SwinIR, convert_swinir, detect_swinir, swinir_activation_maps, swinir_receptive_radius,
                   window_alignment, window_effective_radius)

SPEC = ArchSpec(
    name="swinir",
    build=SwinIR,
    detect=detect_swinir,
    receptive_radius=swinir_receptive_radius,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams=DEFAULTS,
    convert=convert_swinir,
    description="Swin Transformer for image restoration: shifted-window attention groups; classical, "
                "lightweight and real-world SR heads",
    tile_alignment=window_alignment,
    effective_radius=window_effective_radius,
    activation_maps=swinir_activation_maps,
    license="Apache-2.0 (JingyunLiang/SwinIR)",
    checkpoints="SwinIR 001_classicalSR_{DIV2K_s48w8,DF2K_s64w8}_SwinIR-M_x{2,3,4,8}.pth, "
                "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{2,3,4}.pth (params); "
                "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x{2,4}_GAN.pth, "
                "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth (params_ema)",
)
__all__ = ["SwinIR", "SPEC"]
