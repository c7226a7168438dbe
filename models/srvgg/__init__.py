"""Real-ESRGAN SRVGGNetCompact (Wang et al., 2021; the "compact" models). Keys as in Real-ESRGAN's
``realesr-general-x4v3.pth`` / ``realesr-animevideov3.pth`` (``body.{i}``, under ``params``)."""
from ..spec import ArchSpec, InputConvention
from .arch import DEFAULTS, NO_WEIGHTS_ACTIVATION, SRVGGNetCompact, detect_srvgg, srvgg_activation_maps, srvgg_receptive_radius

SPEC = ArchSpec(
    name="srvgg",
    build=SRVGGNetCompact,
    detect=detect_srvgg,
    receptive_radius=srvgg_receptive_radius,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams=DEFAULTS,
    description="Real-ESRGAN compact: VGG-style 3x3 convs at LR size, pixel shuffle + nearest-upsampled input",
    activation_maps=srvgg_activation_maps,
    license="BSD-3-Clause (xinntao/Real-ESRGAN)",
    checkpoints="Real-ESRGAN realesr-general-x4v3.pth, realesr-general-wdn-x4v3.pth, realesr-animevideov3.pth "
                "(params); community compact models (PReLU; weights without PReLU slopes are taken as "
                f"act_type={NO_WEIGHTS_ACTIVATION}, --hparams act_type=leakyrelu overrides)",
)
__all__ = ["SRVGGNetCompact", "SPEC"]
