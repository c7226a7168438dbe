"""What each architecture declares about itself, as data (one ``ArchSpec`` per folder).

Everything the pipeline, the server, the exporter and the model cards need to know about an
architecture lives here, so a new architecture is its folder plus one line in ``registry``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

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


class SharedBody(NamedTuple):
    """A multi-scale network split as per-scale head, shared body, per-scale tail (MDSR), so the
    server can run the body once on a batch whose tiles ask for different scales."""

    head: Callable  # (x in value range, scale) -> features
    body: Callable  # features -> features
    tail: Callable  # (features, scale) -> output in value range


@dataclass(frozen=True)
class PaperResult:
    """Published Y-PSNR figures to compare a model card with (``../shared/SEEDS.md``)."""

    name: str
    psnr: dict  # {("Set5", 2): 37.53, ...}


def _no_alignment(hparams: dict, scale: int) -> int:
    return 1


def _no_effective_radius(hparams: dict, scale: int) -> float | None:
    return None


def _generic_activation_maps(hparams: dict, scale: int) -> float:
    """Input, output and temporaries only; architectures override it with their own model."""
    return 4 * scale * scale + 3


def _no_shared_body(net: nn.Module) -> SharedBody | None:
    return None


def _unchanged(net: nn.Module) -> nn.Module:
    return net


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build it, recognise its checkpoints, feed, tile and export it.

    ``build(**hparams)`` returns the network whose parameter names equal the official keys.
    ``detect(state_dict)`` returns hyper-parameters (incl. ``scale``/``scales``) or None.
    ``convert(state_dict)`` maps other official key layouts onto ours (identity by default).
    ``receptive_radius(hparams)`` is the theoretical radius in LR pixels.
    ``fp16_safe`` stays False until a parity test on a GPU shows otherwise.

    Tiling and memory (``srserve.pipeline``):
    ``tile_alignment(hparams, scale)``: multiple every tile offset and size must have (RRDBNet
    ×2/×1 pixel-unshuffle); ``effective_radius(hparams, scale)``: a measured radius in LR pixels
    used (with blending) when the theoretical one is too large to be a margin, None otherwise;
    ``activation_maps(hparams, scale)``: peak float feature maps alive per LR pixel of a window
    (the memory model for automatic tile sizes); ``flops_per_lr_pixel(hparams, scale)``: FLOPs
    (2 × multiply-adds) per LR pixel when known analytically (None = counted by
    ``srserve.models.flops`` on a small input).
    Serving: ``shared_body(net)`` splits a multi-scale network for cross-scale batches (None =
    it cannot be split). Export: ``export_rewrite(srnet)`` returns a copy whose graph exports
    (DASR's per-sample convolution), identity by default.
    Cards: ``paper`` (published figures), ``license`` of the official weights, ``checkpoints``
    (the release files ``srserve import`` accepts).
    CPU bf16 (OpenVINO): ``cpu_bf16_body`` names the submodules of the network whose layers alone
    run in bf16, everything else (the convolutions that read or write the image itself, colour
    conversion, bicubic, residual adds to the image) staying fp32; empty = the whole graph under
    OpenVINO's bf16 hint. Either way a scale runs bf16 only once it passed the CPU bf16 gate
    (``srserve gate cpu-bf16``), which records the scope it measured.
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
    tile_alignment: Callable[[dict, int], int] = _no_alignment
    effective_radius: Callable[[dict, int], float | None] = _no_effective_radius
    activation_maps: Callable[[dict, int], float] = _generic_activation_maps
    flops_per_lr_pixel: Callable[[dict, int], float] | None = None
    shared_body: Callable[[nn.Module], SharedBody | None] = _no_shared_body
    export_rewrite: Callable[[nn.Module], nn.Module] = _unchanged
    cpu_bf16_body: tuple[str, ...] = ()
    paper: PaperResult | None = None
    license: str = ""
    checkpoints: str = ""
