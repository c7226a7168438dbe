"""MDSR (Lim et al., 2017): shared body, per-scale 5x5 pre-process blocks and upsamplers.
Keys as in EDSR-PyTorch ``mdsr-*.pt`` / ``mdsr_baseline-*.pt``."""
from ..spec import ArchSpec, InputConvention
from .arch import MDSR, detect_mdsr, mdsr_receptive_radius

SPEC = ArchSpec(
    name="mdsr",
    build=MDSR,
    detect=detect_mdsr,
    receptive_radius=mdsr_receptive_radius,
    convention=InputConvention(value_range=255.0, color="rgb"),
    default_hparams={"n_resblocks": 16, "n_feats": 64, "scales": [2, 3, 4]},
    multi_scale=True,
    description="Multi-scale deep SR: one shared body, scale-specific heads chosen per call",
)
__all__ = ["MDSR", "SPEC"]
