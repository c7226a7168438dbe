"""DASR (Wang et al., CVPR 2021): a degradation encoder (``E.encoder_q``) and a
degradation-aware SR network (``G``). Keys as in LongguangWang/DASR ``model_600.pt`` with the
MoCo key encoder and queue (``E.encoder_k``, ``E.queue``, ``E.queue_ptr``) dropped."""
from ..common import residual_trunk_activation_maps
from ..spec import ArchSpec, InputConvention, PaperResult
from .export import with_per_sample_convs
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
    activation_maps=lambda h, scale: residual_trunk_activation_maps(h.get("n_feats", 64), scale, 7),
    export_rewrite=with_per_sample_convs,
    paper=PaperResult("DASR (σ = 0)", {("Set5", 2): 37.87, ("Set5", 3): 34.11, ("Set5", 4): 31.99,
                                       ("Set14", 2): 33.34, ("Set14", 3): 30.13, ("Set14", 4): 28.50}),
    license="MIT (LongguangWang/DASR)",
    checkpoints="LongguangWang/DASR model_600.pt (MoCo key encoder and queue dropped)",
)
__all__ = ["BlindSR", "SPEC"]
