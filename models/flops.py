"""Arithmetic cost of a model: FLOPs (2 × multiply-adds) per LR pixel of a tile, per scale.

Benchmarks divide achieved FLOP/s by a device peak (``srserve.backends.peaks``) to say how far an
engine is from the roofline. The count comes from the architecture's analytic formula when its
``ArchSpec.flops_per_lr_pixel`` gives one, else from ``torch.utils.flop_counter.FlopCounterMode``
on a meta-device copy of the network (no arithmetic runs, so it costs milliseconds even for a
23-block RRDBNet). The counter sees convolutions and matrix products only — the work a GPU's
tensor cores do — so element-wise ops (ReLU, residual adds, pixel shuffle) are not counted, as
in the published GFLOP figures of SR networks. Every network here has 'same'-padded
convolutions, so the count is exactly proportional to the pixels; it is taken on a square of
``COUNT_SIDE`` LR pixels (rounded to the tile alignment) and divided by its area.

DASR counts its SR path for a given degradation vector: the degradation encoder runs once per
image, not per tile.
"""
from __future__ import annotations

import copy
import json
import math
import threading

import torch
from torch.utils.flop_counter import FlopCounterMode

from .repository import LoadedModel

COUNT_SIDE = 16
_cache: dict[tuple, float] = {}
_lock = threading.Lock()


def count_flops(net: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``net`` on ``inputs`` (counted, not estimated)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(*inputs)
    return int(counter.get_total_flops())


def counted_flops_per_lr_pixel(srnet: torch.nn.Module, *, align: int = 1, needs_degradation: bool = False) -> float:
    """FLOPs per LR pixel of an ``SRNet`` (N×3×h×w -> N×3×sh×sw), counted on the meta device."""
    side = math.ceil(COUNT_SIDE / max(1, align)) * max(1, align)
    meta = copy.deepcopy(srnet).to("meta")
    x = torch.empty(1, 3, side, side, device="meta")
    inputs = (x, torch.empty(1, 256, device="meta")) if needs_degradation else (x,)
    return count_flops(meta, *inputs) / (side * side)


def flops_per_lr_pixel(model: LoadedModel, scale: int) -> float:
    """FLOPs per LR pixel of ``model`` at ``scale``: the architecture's analytic value when its
    spec has one, else counted (once per architecture, hyper-parameters and scale)."""
    spec, hparams, scale = model.spec, model.hparams(scale), int(scale)
    if spec.flops_per_lr_pixel is not None:
        return float(spec.flops_per_lr_pixel(hparams, scale))
    key = (spec.name, json.dumps(hparams, sort_keys=True, default=str), scale)
    with _lock:
        if key not in _cache:
            align = int(spec.tile_alignment(hparams, scale))
            _cache[key] = counted_flops_per_lr_pixel(model.net(scale), align=align,
                                                     needs_degradation=spec.needs_degradation)
        return _cache[key]


def flops_per_output_pixel(model: LoadedModel, scale: int) -> float:
    return flops_per_lr_pixel(model, scale) / (int(scale) ** 2)
