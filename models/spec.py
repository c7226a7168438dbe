"""What each architecture declares about itself, as data (one ``ArchSpec`` per folder)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class InputConvention:
    """How the network expects its input.

    ``value_range``: 255 for EDSR-family checkpoints (``rgb_range`` 255), 1 for RRDBNet/VDSR.
    ``color``: ``"rgb"`` or ``"y"`` (BT.601 luma only; chroma is upscaled by bicubic).
    ``pre_upsample``: the network runs at HR size on a bicubic-upscaled input (VDSR).
    """

    value_range: float = 255.0
    color: str = "rgb"
    pre_upsample: bool = False

    def to_json(self) -> dict:
        return {"value_range": self.value_range, "color": self.color, "pre_upsample": self.pre_upsample}


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build it, recognise its checkpoints and feed it.

    ``build(**hparams)`` returns the network whose parameter names equal the official keys.
    ``detect(state_dict)`` returns hyper-parameters (incl. ``scale``/``scales``) or None.
    ``convert(state_dict)`` maps other official key layouts onto ours (identity by default).
    ``receptive_radius(hparams)`` is the theoretical radius in LR pixels.
    ``fp16_safe`` stays False until a parity test on a GPU shows otherwise.
    """

    name: str
    build: Callable[..., nn.Module]
    detect: Callable[[dict], dict | None]
    receptive_radius: Callable[[dict], float]
    convention: InputConvention
    default_hparams: dict
    multi_scale: bool = False  # one network, forward(x, scale) picks the head (MDSR, VDSR)
    needs_degradation: bool = False  # DASR: a degradation vector is a second input
    fp16_safe: bool = False
    convert: Callable[[dict], dict] = field(default=lambda sd: sd)
    description: str = ""
