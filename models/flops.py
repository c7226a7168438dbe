"""FLOPs per LR pixel of a model at one scale: what benchmarks divide by to report GFLOP/s.

The architecture's spec gives the number when it is known analytically
(``ArchSpec.flops_per_lr_pixel``); otherwise it is counted by running the network once under
``torch.utils.flop_counter.FlopCounterMode`` on a small input. FLOPs are 2 × multiply-adds of
the counted operators (convolutions, matrix products); element-wise work (activations, residual
adds, pixel shuffles) is not counted, as in published FLOP figures. Convolutions cost the same
per output pixel whatever the input size, so the count scales exactly with the LR area.
DASR: the SR network given a degradation vector, without its encoder, which runs once per image.
"""
from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

COUNT_SIDE = 24  # LR side of the counting input: small, and a multiple of every tile alignment


def flops_per_lr_pixel(loaded_model, scale: int) -> float:
    """FLOPs per LR input pixel of ``loaded_model`` (a ``LoadedModel``) at ``scale``."""
    scale = int(scale)
    analytic = loaded_model.spec.flops_per_lr_pixel
    if analytic is not None:
        return float(analytic(loaded_model.hparams(scale), scale))
    align = loaded_model.spec.tile_alignment(loaded_model.hparams(scale), scale)
    return count_flops_per_lr_pixel(loaded_model.net(scale), math.ceil(COUNT_SIDE / align) * align)


def count_flops_per_lr_pixel(srnet: torch.nn.Module, side: int = COUNT_SIDE) -> float:
    """Counted FLOPs of one ``SRNet`` forward on a 1×3×side×side input, per LR pixel."""
    device = next((p.device for p in srnet.parameters()), torch.device("cpu"))
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        degradation = srnet.estimate_degradation(x) if srnet.needs_degradation else None
        counter = FlopCounterMode(display=False)
        with counter:
            srnet(x, degradation)
    return counter.get_total_flops() / (side * side)
