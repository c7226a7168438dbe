"""ESRGAN's RRDBNet (Wang et al., ECCV-W 2018). Canonical keys: BasicSR / Real-ESRGAN
(``conv_first``, ``body.{i}.rdb{k}.conv{j}``, ``conv_body``, ``conv_up1/2``, ``conv_hr``,
``conv_last``); the original ESRGAN and the old ``model.N`` layouts are converted."""
from ..spec import ArchSpec, InputConvention, PaperResult
from .arch import UNSHUFFLE, RRDBNet, convert_rrdbnet, detect_rrdbnet, rrdbnet_receptive_radius

# Measured effective receptive radius in trunk pixels (bench/receptive_field.py, README "Upscaling"):
# the theoretical one (348 LR px for 23 blocks at x4) would make every window mostly context.
EFFECTIVE_TRUNK_RADIUS = 24


def rrdbnet_activation_maps(h: dict, scale: int) -> float:
    f, g = h.get("num_feat", 64), h.get("num_grow_ch", 32)
    u2 = UNSHUFFLE[scale] ** 2
    trunk = 4 * f + 9 * g
    hr = 48 * f + 48  # three F-wide maps at 4x the trunk resolution, plus the output
    return (max(trunk, hr) + 3 * u2) / u2


SPEC = ArchSpec(
    name="rrdbnet",
    build=RRDBNet,
    detect=detect_rrdbnet,
    receptive_radius=rrdbnet_receptive_radius,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams={"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64, "num_block": 23, "num_grow_ch": 32},
    convert=convert_rrdbnet,
    description="Residual-in-residual dense blocks; x4, and the pixel-unshuffle x2/x1 variants of Real-ESRGAN",
    tile_alignment=lambda h, scale: UNSHUFFLE[int(scale)],
    effective_radius=lambda h, scale: EFFECTIVE_TRUNK_RADIUS * UNSHUFFLE[int(scale)],
    activation_maps=rrdbnet_activation_maps,
    paper=PaperResult("RRDB (ESRGAN, PSNR)", {("Set5", 4): 32.73, ("Set14", 4): 28.99}),
    license="Apache-2.0 (xinntao/ESRGAN); BSD-3-Clause (xinntao/Real-ESRGAN)",
    checkpoints="ESRGAN RRDB_*.pth (old and new layouts), Real-ESRGAN RealESRGAN_x{4,2}plus.pth, RealESRNet_x4plus.pth "
                "(params_ema)",
)
__all__ = ["RRDBNet", "SPEC"]
