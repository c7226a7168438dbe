"""SPAN, the Swift Parameter-free Attention Network (Wan et al., CVPR-W 2024; NTIRE 2024 ESR winner).

Official keys (hongyuanyu/SPAN ``spanx{2,4}_ch{48,52}.pth``): ``conv_1``, ``block_1`` ..
``block_6`` (``c1_r``/``c2_r``/``c3_r``), ``conv_cat``, ``conv_2``, ``upsampler.0``. Every 3×3
layer is a re-parameterisable ``Conv3XC``: a 1×1 skip (``sk``) plus a 1×1 → 3×3 → 1×1 chain
(``conv.0..2``), which the official model folds into one 3×3 kernel (``eval_conv``) on every
evaluation-mode forward. The stored ``eval_conv`` is whatever was folded last (stale, or the
random initialisation, in checkpoints saved during training), so ``convert_span`` folds the
branches again and the network runs ``eval_conv`` alone: one convolution per layer.

Input normalisation: ``(x - DIV2K mean) · 255``; the output is not shifted back (the network
learned to produce [0, 1] directly). traiNNer-redux's variant without it stores a ``no_norm``
buffer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import DIV2K_RGB_MEAN

NUM_BLOCKS = 6
GAIN = 2  # width multiplier of the 1×1 → 3×3 → 1×1 branch
# spanx4_ch48, the constructor's defaults
DEFAULTS = {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 48, "scale": 4, "norm": True, "img_range": 255.0}


class Conv3XC(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_in * GAIN, 1), nn.Conv2d(c_in * GAIN, c_out * GAIN, 3),
                                  nn.Conv2d(c_out * GAIN, c_out, 1))
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


def fold_conv3xc(sd: dict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The single 3×3 kernel and bias equal to ``sk(x) + conv.2(conv.1(conv.0(zero-pad(x))))``.

    The zero padding goes in before the first 1×1 conv, so padded pixels still carry its bias
    through the 3×3 taps: the folded bias sums it over all nine taps, at the border too.
    """
    w0, b0 = sd[f"{prefix}conv.0.weight"][:, :, 0, 0], sd[f"{prefix}conv.0.bias"]
    w1, b1 = sd[f"{prefix}conv.1.weight"], sd[f"{prefix}conv.1.bias"]
    w2, b2 = sd[f"{prefix}conv.2.weight"][:, :, 0, 0], sd[f"{prefix}conv.2.bias"]
    kernel = torch.einsum("on,nmyx,mi->oiyx", w2.double(), w1.double(), w0.double())
    bias = w2.double() @ (b1.double() + torch.einsum("nmyx,m->n", w1.double(), b0.double())) + b2.double()
    kernel[:, :, 1, 1] += sd[f"{prefix}sk.weight"][:, :, 0, 0].double()
    bias += sd[f"{prefix}sk.bias"].double()
    dtype = sd[f"{prefix}sk.weight"].dtype
    return kernel.to(dtype), bias.to(dtype)


def convert_span(sd: dict) -> dict:
    """Re-folds every ``eval_conv`` from its branches (see the module docstring)."""
    out = dict(sd)
    for key in sd:
        if key.endswith("eval_conv.weight"):
            prefix = key[: -len("eval_conv.weight")]
            if all(f"{prefix}{name}" in sd for name in ("sk.weight", "sk.bias", "conv.0.weight", "conv.0.bias",
                                                        "conv.1.weight", "conv.1.bias", "conv.2.weight",
                                                        "conv.2.bias")):
                out[f"{prefix}eval_conv.weight"], out[f"{prefix}eval_conv.bias"] = fold_conv3xc(sd, prefix)
    return out


class SPAB(nn.Module):
    """Three Conv3XC with SiLU between; parameter-free attention ``sigmoid(out3) - 0.5``."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r = Conv3XC(channels, channels)
        self.c2_r = Conv3XC(channels, channels)
        self.c3_r = Conv3XC(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.c1_r(x)
        out3 = self.c3_r(F.silu(self.c2_r(F.silu(out1))))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPAN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, feature_channels: int = 48, scale: int = 4,
                 norm: bool = True, img_range: float = 255.0):
        super().__init__()
        if norm and num_in_ch != 3:
            raise ValueError(f"SPAN's input normalisation subtracts an RGB mean; num_in_ch is {num_in_ch}")
        self.norm = bool(norm)
        self.img_range = float(img_range)
        self.register_buffer("mean", torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        if not norm:
            self.register_buffer("no_norm", torch.zeros(1))  # the marker key of checkpoints without it
        self.conv_1 = Conv3XC(num_in_ch, feature_channels)
        for i in range(1, NUM_BLOCKS + 1):
            self.add_module(f"block_{i}", SPAB(feature_channels))
        self.conv_cat = nn.Conv2d(feature_channels * 4, feature_channels, 1)
        self.conv_2 = Conv3XC(feature_channels, feature_channels)
        self.upsampler = nn.Sequential(nn.Conv2d(feature_channels, num_out_ch * scale * scale, 3, 1, 1),
                                       nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = (x - self.mean) * self.img_range
        first = self.conv_1(x)
        out = block_1_out = first
        for i in range(1, NUM_BLOCKS + 1):
            out, out1 = getattr(self, f"block_{i}")(out)
            if i == 1:
                block_1_out = out
        # the concatenation takes block 1's output and the last block's first-conv output
        cat = torch.cat([first, self.conv_2(out), block_1_out, out1], dim=1)
        return self.upsampler(self.conv_cat(cat))


REQUIRED = ("conv_1.sk.weight", "conv_1.conv.0.weight", "conv_1.eval_conv.weight", "block_1.c1_r.sk.weight",
            f"block_{NUM_BLOCKS}.c3_r.eval_conv.weight", "conv_cat.weight", "conv_2.sk.weight", "upsampler.0.weight")


def detect_span(sd: dict) -> dict | None:
    if not all(k in sd for k in REQUIRED) or f"block_{NUM_BLOCKS + 1}.c1_r.sk.weight" in sd:
        return None
    num_in_ch, feats = sd["conv_1.sk.weight"].shape[1], sd["conv_1.sk.weight"].shape[0]
    shuffled = sd["upsampler.0.weight"].shape[0]
    for out_ch in dict.fromkeys((num_in_ch, 3, 1)):
        scale = round((shuffled / out_ch) ** 0.5)
        if scale >= 1 and out_ch * scale * scale == shuffled:
            break
    else:
        return None
    return {"num_in_ch": num_in_ch, "num_out_ch": out_ch, "feature_channels": feats, "scale": scale,
            "norm": "no_norm" not in sd, "img_range": 255.0}


def span_receptive_radius(h: dict) -> float:
    """conv_1, three 3×3 layers in each of six blocks, conv_2 and the upsampler conv (conv_cat is 1×1)."""
    return float(1 + 3 * NUM_BLOCKS + 1 + 1)


def span_activation_maps(h: dict, scale: int) -> float:
    """At the end the four maps kept for the concatenation, its copy and conv_cat's output (9F);
    in a block two kept maps and five temporaries (7F); then the 3s² conv output and its shuffled
    copy. Measured: ``bench/tiling.py``, BENCHMARKS.md."""
    f = {**DEFAULTS, **h}["feature_channels"]
    return max(9 * f, f + 6 * scale * scale) + 3
