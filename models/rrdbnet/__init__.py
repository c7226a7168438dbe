"""ESRGAN's RRDBNet (Wang et al., ECCV-W 2018). Canonical keys: BasicSR / Real-ESRGAN
(``conv_first``, ``body.{i}.rdb{k}.conv{j}``, ``conv_body``, ``conv_up1/2``, ``conv_hr``,
``conv_last``); the original ESRGAN and the old ``model.N`` layouts are converted."""
from ..spec import ArchSpec, InputConvention
from .arch import RRDBNet, convert_rrdbnet, detect_rrdbnet, rrdbnet_receptive_radius

SPEC = ArchSpec(
    name="rrdbnet",
    build=RRDBNet,
    detect=detect_rrdbnet,
    receptive_radius=rrdbnet_receptive_radius,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams={"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64, "num_block": 23, "num_grow_ch": 32},
    convert=convert_rrdbnet,
    description="Residual-in-residual dense blocks; x4, and the pixel-unshuffle x2/x1 variants of Real-ESRGAN",
)
__all__ = ["RRDBNet", "SPEC"]
