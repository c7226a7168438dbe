"""DASR (Wang et al., CVPR 2021): a degradation encoder (``E.encoder_q``) and a
degradation-aware SR network (``G``). Keys as in LongguangWang/DASR ``model_600.pt`` with the
MoCo key encoder and queue (``E.encoder_k``, ``E.queue``, ``E.queue_ptr``) dropped."""
from ..spec import ArchSpec, InputConvention
from .arch import BlindSR, convert_dasr, dasr_receptive_radius, detect_dasr

SPEC = ArchSpec(
    name="dasr",
    build=BlindSR,
    detect=detect_dasr,
    receptive_radius=dasr_receptive_radius,
    convention=InputConvention(value_range=255.0, color="rgb"),
    default_hparams={"n_groups": 5, "n_blocks": 5, "n_feats": 64, "reduction": 8, "scale": 4},
    needs_degradation=True,
    convert=convert_dasr,
    description="Blind SR: contrastive degradation encoder + DA-conv SR network",
)
__all__ = ["BlindSR", "SPEC"]
