"""SwinIR (Liang et al., ICCV-W 2021): conv, residual Swin Transformer blocks (RSTB), conv, and one
of three reconstruction heads. Official keys as in JingyunLiang/SwinIR's releases:

* ``pixelshuffle`` (classical SR, ``001_classicalSR_*``): ``conv_before_upsample.0``,
  ``upsample.{0,2,..}`` (sub-pixel stages of ``num_feat`` = 64), ``conv_last``.
* ``pixelshuffledirect`` (lightweight, ``002_lightweightSR_*``): ``upsample.0`` straight to
  3·s² channels.
* ``nearest+conv`` (real-world, ``003_realSR_*``): ``conv_before_upsample.0``, ``conv_up1``
  (``conv_up2`` at ×4) after nearest ×2 upsamplings, ``conv_hr``, ``conv_last``.

The body: ``conv_first``, ``patch_embed.norm``, ``layers.{i}.residual_group.blocks.{j}``
(``norm1``, ``attn.relative_position_bias_table``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``), ``layers.{i}.conv`` (``1conv``, or ``.0/.2/.4`` for ``3conv``),
``norm``, ``conv_after_body``. The buffers ``attn.relative_position_index`` and ``attn_mask``
(for the training patch size) are recomputed, so ``convert_swinir`` drops them.

Input: RGB in [0, 1], minus the DIV2K mean, times ``img_range`` (1 for every SR release); the
image is reflect-padded at the bottom/right to a multiple of the window and the output cropped
back, as BasicSR's SwinIR does (the official test script pads by flipping outside the model).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import DIV2K_RGB_MEAN, Upsampler, count_indexed, upsampler_radius, upsampler_scale
from ..errors import SRError
from .attention import (PatchEmbed, ResidualGroup, SwinBlock, conv_channels_last, pad_to_multiple,
                        relative_position_index, residual_conv, shifted_window_mask, window_size_of)

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv")
# SwinIR-M classical x2, the constructor's defaults; stored hparams may omit any of them
DEFAULTS = {"num_in_ch": 3, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
            "mlp_ratio": 2.0, "qkv_bias": True, "patch_norm": True, "resi_connection": "1conv",
            "upsampler": "pixelshuffle", "scale": 2, "num_feat": 64, "img_range": 1.0}
BLOCK = "layers.{}.residual_group.blocks.{}."
DERIVED_BUFFERS = ("attn.relative_position_index", "attn_mask")


class UnsupportedVariant(SRError, ValueError):
    """A checkpoint of a known family in a configuration we do not serve (one line)."""


class RSTB(nn.Module):
    """Residual Swin Transformer block: ``depth`` Swin blocks, a conv, plus the input."""

    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float, qkv_bias: bool, resi: str):
        super().__init__()
        self.residual_group = ResidualGroup([SwinBlock(dim, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio,
                                                       qkv_bias) for i in range(depth)])
        self.conv = residual_conv(dim, resi)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, index, mask)
        return conv_channels_last(self.conv, y) + x


class SwinIR(nn.Module):
    def __init__(self, num_in_ch: int = 3, embed_dim: int = 180, depths=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0, qkv_bias: bool = True,
                 patch_norm: bool = True, resi_connection: str = "1conv", upsampler: str = "pixelshuffle",
                 scale: int = 2, num_feat: int = 64, img_range: float = 1.0):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise UnsupportedVariant(f"SwinIR upsampler {upsampler!r} is not served (SR heads: {', '.join(UPSAMPLERS)})")
        if upsampler == "nearest+conv" and scale not in (2, 4):
            raise ValueError(f"SwinIR's nearest+conv head is x2 or x4, not x{scale}")
        self.window_size, self.scale, self.upsampler = int(window_size), int(scale), upsampler
        self.img_range = float(img_range)
        mean = torch.tensor(DIV2K_RGB_MEAN) if num_in_ch == 3 else torch.zeros(num_in_ch)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("position_index", relative_position_index(self.window_size), persistent=False)

        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.layers = nn.ModuleList(RSTB(embed_dim, d, h, self.window_size, mlp_ratio, qkv_bias, resi_connection)
                                    for d, h in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.upsample = Upsampler(self.scale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, num_in_ch, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, num_in_ch * self.scale**2, 3, 1, 1),
                                          nn.PixelShuffle(self.scale))
        else:
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            if self.scale == 4:
                self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, num_in_ch, 3, 1, 1)

    def forward_features(self, feat: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        mask = shifted_window_mask(h, w, self.window_size, self.window_size // 2, feat.device)
        x = self.patch_embed(feat.permute(0, 2, 3, 1))
        for layer in self.layers:
            x = layer(x, self.position_index, mask)
        return self.norm(x).permute(0, 3, 1, 2)

    def reconstruct(self, feat: torch.Tensor) -> torch.Tensor:
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(feat)
        x = self.conv_before_upsample(feat)
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(x))
        x = F.leaky_relu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        if self.scale == 4:
            x = F.leaky_relu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = (pad_to_multiple(x, self.window_size) - self.mean) * self.img_range
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        out = self.reconstruct(feat) / self.img_range + self.mean
        return out[..., : h * self.scale, : w * self.scale]


def convert_swinir(sd: dict) -> dict:
    """Drops the buffers the network recomputes (relative-position indices, shift masks)."""
    return {k: v for k, v in sd.items() if not k.endswith(DERIVED_BUFFERS)}


def detect_swinir(sd: dict) -> dict | None:
    sd = convert_swinir(sd)
    table = BLOCK.format(0, 0) + "attn.relative_position_bias_table"
    if "conv_first.weight" not in sd or table not in sd or BLOCK.format(0, 0) + "conv_block.cab.0.weight" in sd:
        return None  # not a SwinIR (HAT has conv_block and overlap_attn in its groups)
    if "absolute_pos_embed" in sd:
        raise UnsupportedVariant("SwinIR with an absolute position embedding (fixed image size) is not served")
    embed_dim = sd["conv_first.weight"].shape[0]
    groups = count_indexed(sd, "layers.{}.residual_group.blocks.0.norm1.weight")
    return {
        "num_in_ch": sd["conv_first.weight"].shape[1],
        "embed_dim": embed_dim,
        "depths": [count_indexed(sd, BLOCK.format(i, "{}") + "norm1.weight") for i in range(groups)],
        "num_heads": [sd[BLOCK.format(i, 0) + "attn.relative_position_bias_table"].shape[1] for i in range(groups)],
        "window_size": window_size_of(sd[table]),
        "mlp_ratio": sd[BLOCK.format(0, 0) + "mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": BLOCK.format(0, 0) + "attn.qkv.bias" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
        **reconstruction_of(sd),
        "img_range": 1.0,
    }


def reconstruction_of(sd: dict) -> dict:
    """upsampler, scale and num_feat from the head's keys and shapes."""
    if "conv_up1.weight" in sd:
        return {"upsampler": "nearest+conv", "scale": 4 if "conv_up2.weight" in sd else 2,
                "num_feat": sd["conv_up1.weight"].shape[0]}
    if "conv_before_upsample.0.weight" in sd:
        num_feat = sd["conv_before_upsample.0.weight"].shape[0]
        return {"upsampler": "pixelshuffle", "scale": upsampler_scale(sd, "upsample.", num_feat), "num_feat": num_feat}
    if "upsample.0.weight" in sd:
        in_ch = sd["conv_first.weight"].shape[1]
        scale = round(math.sqrt(sd["upsample.0.weight"].shape[0] / in_ch))
        return {"upsampler": "pixelshuffledirect", "scale": scale, "num_feat": 64}
    raise UnsupportedVariant("SwinIR without an upsampler (denoising / JPEG artifact removal, x1) is not served")


def swinir_receptive_radius(h: dict) -> float:
    """Theoretical radius in LR pixels: a window lets a token see ws-1 pixels away, once per Swin
    block (the shifted ones included); plus the convolutions (3×3: 1, ``3conv``: 2) and the head."""
    h = {**DEFAULTS, **h}
    convs = 1 if h["resi_connection"] == "1conv" else 2
    body = 1 + sum(d * (h["window_size"] - 1) + convs for d in h["depths"]) + convs
    return body + head_radius(h)


def head_radius(h: dict) -> float:
    h = {**DEFAULTS, **h}
    s = h["scale"]
    if h["upsampler"] == "pixelshuffledirect":
        return 1.0
    if h["upsampler"] == "pixelshuffle":
        return 1 + upsampler_radius(s) + 1 / s
    return 1 + 1 / 2 + (1 / 4 if s == 4 else 0) + 2 / s  # conv_before, conv_up1/2, conv_hr + conv_last at HR


def window_effective_radius(h: dict, scale: int) -> float:
    """Context for blended tiles, in windows: 2 plus one per three residual groups (SwinIR-S/M
    4 windows = 32 px at ws 8, the overlap of the official tiled test; SwinIR-L 5; HAT-L 6)."""
    h = {**DEFAULTS, **h}
    return h["window_size"] * (2 + math.ceil(len(h["depths"]) / 3))


def window_alignment(h: dict, scale: int) -> int:
    """Tiles start and end on the window grid, as the padded whole image does."""
    return int({**DEFAULTS, **h}["window_size"])


def swinir_activation_maps(h: dict, scale: int) -> float:
    """Per LR pixel in the busiest block: the attention logits, their biased/masked copy and the
    softmax (3·heads·ws²), q/k/v and their per-head copies, the residual stream, its norm and the
    attention output (8·C), the MLP hidden layer and the shift mask; or the HR head (its 64-wide
    maps at the last sub-pixel stage). Measured: ``bench/tiling.py``, BENCHMARKS.md."""
    h = {**DEFAULTS, **h}
    c, heads, n = h["embed_dim"], max(h["num_heads"]), h["window_size"] ** 2
    body = 3 * heads * n + 8 * c + c * h["mlp_ratio"] + n
    s = scale
    if h["upsampler"] == "pixelshuffledirect":
        head = c + 6 * s * s
    else:
        head = 3 * h["num_feat"] * s * s
    return max(body, head) + 6 * s * s + 3
