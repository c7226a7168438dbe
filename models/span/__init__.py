"""SPAN (Wan et al., CVPR-W 2024). Keys as in hongyuanyu/SPAN ``spanx{2,4}_ch{48,52}.pth``; the
re-parameterised ``eval_conv`` kernels are folded again from their branches on import."""
from ..spec import ArchSpec, InputConvention
from .arch import DEFAULTS, SPAN, convert_span, detect_span, span_activation_maps, span_receptive_radius

SPEC = ArchSpec(
    name="span",
    build=SPAN,
    detect=detect_span,
    receptive_radius=span_receptive_radius,
    convention=InputConvention(value_range=1.0, color="rgb"),
    default_hparams=DEFAULTS,
    convert=convert_span,
    description="Swift parameter-free attention network: six blocks of re-parameterised 3x3 convs with "
                "sigmoid attention, pixel shuffle",
    activation_maps=span_activation_maps,
    license="Apache-2.0 (hongyuanyu/SPAN)",
    checkpoints="SPAN spanx{2,4}_ch{48,52}.pth (hongyuanyu/SPAN); traiNNer-redux SPAN models (a no_norm buffer "
                "marks those without input normalisation)",
)
__all__ = ["SPAN", "SPEC"]
