"""Real-ESRGAN's SRVGGNetCompact ("compact"): a plain stack of 3×3 convolutions at LR size, one
pixel shuffle, plus the nearest-upsampled input (the network learns the residual).

Official keys (Real-ESRGAN ``realesr-general-x4v3.pth``, ``realesr-animevideov3.pth``, under
``params``): ``body.{2k}`` are the convolutions, ``body.{2k+1}`` the activations, which only a
PReLU stores (``body.{odd}.weight``, one slope per feature). ReLU and LeakyReLU(0.1) hold no
weights, so the weights cannot tell them apart (``NO_WEIGHTS_ACTIVATION``).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("prelu", "relu", "leakyrelu")
# What a checkpoint without PReLU slopes is assumed to use; ``srserve import --hparams
# act_type=leakyrelu`` overrides it. Every released compact model (Real-ESRGAN's and the
# community's) uses PReLU, which the weights do show, so this only matters for home-trained ones.
NO_WEIGHTS_ACTIVATION = "relu"
KEY = re.compile(r"body\.(\d+)\.(weight|bias)$")
# realesr-animevideov3 (x4, 16 convs), the constructor's defaults
DEFAULTS = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 16, "scale": 4, "act_type": "prelu"}


def activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1)
    raise ValueError(f"act_type must be one of {', '.join(ACTIVATIONS)}, got {act_type!r}")


class SRVGGNetCompact(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 scale: int = 4, act_type: str = "prelu"):
        super().__init__()
        if num_out_ch != num_in_ch:
            raise ValueError(f"the nearest-upsampled input is added to the output: num_out_ch ({num_out_ch}) "
                             f"must equal num_in_ch ({num_in_ch})")
        self.scale = int(scale)
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * self.scale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def detect_srvgg(sd: dict) -> dict | None:
    """Every key is ``body.N.weight|bias``; convolutions at even N (4-D), PReLU slopes at odd N."""
    if "body.0.weight" not in sd or not all(KEY.fullmatch(k) for k in sd):
        return None
    indices = {int(KEY.fullmatch(k)[1]) for k in sd}
    last = max(indices)
    convs = sorted(i for i in indices if getattr(sd.get(f"body.{i}.weight"), "ndim", 0) == 4)
    if last < 2 or convs != list(range(0, last + 1, 2)):
        return None
    first, final = sd["body.0.weight"], sd[f"body.{last}.weight"]
    num_in_ch, num_feat = first.shape[1], first.shape[0]
    scale = round((final.shape[0] / num_in_ch) ** 0.5)
    if scale < 1 or num_in_ch * scale * scale != final.shape[0]:
        return None
    return {
        "num_in_ch": num_in_ch,
        "num_out_ch": num_in_ch,
        "num_feat": num_feat,
        "num_conv": last // 2 - 1,
        "scale": scale,
        "act_type": "prelu" if "body.1.weight" in sd else NO_WEIGHTS_ACTIVATION,
    }


def srvgg_receptive_radius(h: dict) -> float:
    """The first conv, ``num_conv`` body convs and the last conv, all 3×3 at LR size."""
    return float({**DEFAULTS, **h}["num_conv"] + 2)


def srvgg_activation_maps(h: dict, scale: int) -> float:
    """Body: a conv's input and output plus the (not in-place) activation output; the end: the
    last conv's 3s² channels, the shuffled copy, the nearest-upsampled input and the sum."""
    f = {**DEFAULTS, **h}["num_feat"]
    return max(3 * f, 12 * scale * scale) + 3
