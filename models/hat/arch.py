"""HAT, the Hybrid Attention Transformer (Chen et al., CVPR 2023), built on SwinIR's pieces.

Each residual hybrid attention group (RHAG) is ``depth`` hybrid attention blocks (HAB: shifted
window attention plus a channel-attention convolution ``conv_block`` scaled by ``conv_scale``)
and one overlapping cross-attention block (OCAB: queries from ws×ws windows, keys and values
from the overlapping ``ws + int(overlap_ratio·ws)`` windows around them). Official keys as in
XPixelGroup/HAT's releases (``params_ema``): ``layers.{i}.residual_group.blocks.{j}.conv_block
.cab.{0,2,3.attention.1,3.attention.3}``, ``layers.{i}.residual_group.overlap_attn.*``, and
SwinIR's names elsewhere; the top-level buffers ``relative_position_index_SA``/``_OCA`` are
recomputed (``convert_hat`` drops them). Only the classical ``pixelshuffle`` head exists.

The channel attention pools over the whole (padded) image, so every output pixel depends on
every input pixel: the theoretical receptive radius is the whole image (``WHOLE_IMAGE``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import DIV2K_RGB_MEAN, Upsampler, count_indexed, upsampler_scale
from ..swinir.arch import UnsupportedVariant
from ..swinir.attention import (Mlp, PatchEmbed, ResidualGroup, SwinBlock, conv_channels_last, grid, mlp_hidden,
                                multi_head_attention, pad_to_multiple, position_bias, relative_position_index,
                                residual_conv, shifted_window_mask, window_merge, window_partition,
                                window_size_of)

BLOCK = "layers.{}.residual_group.blocks.{}."
OVERLAP = "layers.{}.residual_group.overlap_attn."
DERIVED_BUFFERS = ("relative_position_index_SA", "relative_position_index_OCA")
# LR pixels: larger than any image served (the server's default limit is 2048² pixels), so an
# exact plan (margin >= radius) gives every tile the whole image.
WHOLE_IMAGE = float(1 << 16)
# HAT (-M) x4 as released, the constructor's defaults; stored hparams may omit any of them
DEFAULTS = {"num_in_ch": 3, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
            "compress_ratio": 3, "squeeze_factor": 30, "conv_scale": 0.01, "overlap_ratio": 0.5, "mlp_ratio": 2.0,
            "qkv_bias": True, "patch_norm": True, "resi_connection": "1conv", "upsampler": "pixelshuffle",
            "scale": 4, "num_feat": 64, "img_range": 1.0}


def overlap_window(ws: int, overlap_ratio: float) -> int:
    return ws + int(ws * overlap_ratio)


def overlap_position_index(ws: int, ows: int) -> torch.Tensor:
    """ws²×ows² index into OCAB's (ws+ows-1)² bias table, the official formula: (Δrow + ws-ows+1)
    ·(ws+ows-1) + Δcol + ws-ows+1 with Δ = key - query coordinates. It is negative for part of
    the pairs, which the official table lookup wraps around; the modulo makes that explicit."""
    delta = grid(ows)[:, None, :] - grid(ws)[:, :, None] + (ws - ows + 1)
    side = ws + ows - 1
    return (delta[0] * side + delta[1]) % (side * side)


class ChannelAttention(nn.Module):
    """``attention``: global average pool, 1×1 squeeze, ReLU, 1×1 excite, sigmoid (RCAN's)."""

    def __init__(self, dim: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // squeeze_factor, 1), nn.ReLU(),
                                       nn.Conv2d(dim // squeeze_factor, dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    def __init__(self, dim: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(nn.Conv2d(dim, dim // compress_ratio, 3, 1, 1), nn.GELU(),
                                 nn.Conv2d(dim // compress_ratio, dim, 3, 1, 1), ChannelAttention(dim, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class HAB(SwinBlock):
    """A Swin block whose attention branch gets ``conv_scale ×`` the CAB of the same normed input."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float, qkv_bias: bool,
                 compress_ratio: int, squeeze_factor: int, conv_scale: float):
        super().__init__(dim, heads, ws, shift, mlp_ratio, qkv_bias)
        self.conv_scale = conv_scale
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attend(y, index, mask) + conv_channels_last(self.conv_block, y) * self.conv_scale
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    def __init__(self, dim: int, ws: int, overlap_ratio: float, heads: int, qkv_bias: bool, mlp_ratio: float):
        super().__init__()
        self.ws, self.ows, self.heads = ws, overlap_window(ws, overlap_ratio), heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((ws + self.ows - 1) ** 2, heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden(dim, mlp_ratio))

    def overlapping_windows(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the ows×ows windows centred on each ws×ws window (zero padded at
        the border), (b·windows)×ows²×c each, windows in the order of ``window_partition``."""
        b, _, _, c = k.shape
        kv = torch.cat([k, v], dim=-1).permute(0, 3, 1, 2)
        cols = F.unfold(kv, self.ows, stride=self.ws, padding=(self.ows - self.ws) // 2)  # b×(2c·ows²)×windows
        cols = cols.view(b, 2, c, self.ows * self.ows, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, self.ows**2, c)
        return cols[0], cols[1]

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        keys, values = self.overlapping_windows(k, v)
        bias = position_bias(self.relative_position_bias_table, index)
        out = multi_head_attention(window_partition(q, self.ws), keys, values, self.heads, bias, None)
        x = x + self.proj(window_merge(out, self.ws, b, h, w))
        return x + self.mlp(self.norm2(x))


class HybridGroup(ResidualGroup):
    """``residual_group``: the HABs (``blocks``) and the OCAB (``overlap_attn``)."""

    def __init__(self, blocks: list[nn.Module], overlap_attn: OCAB):
        super().__init__(blocks)
        self.overlap_attn = overlap_attn


class RHAG(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float, qkv_bias: bool,
                 compress_ratio: int, squeeze_factor: int, conv_scale: float, overlap_ratio: float, resi: str):
        super().__init__()
        blocks = [HAB(dim, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio, qkv_bias, compress_ratio,
                      squeeze_factor, conv_scale) for i in range(depth)]
        self.residual_group = HybridGroup(blocks, OCAB(dim, ws, overlap_ratio, heads, qkv_bias, mlp_ratio))
        self.conv = residual_conv(dim, resi)

    def forward(self, x: torch.Tensor, index_sa: torch.Tensor, index_oca: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, index_sa, mask)
        y = self.residual_group.overlap_attn(y, index_oca)
        return conv_channels_last(self.conv, y) + x


class HAT(nn.Module):
    def __init__(self, num_in_ch: int = 3, embed_dim: int = 180, depths=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), window_size: int = 16, compress_ratio: int = 3,
                 squeeze_factor: int = 30, conv_scale: float = 0.01, overlap_ratio: float = 0.5,
                 mlp_ratio: float = 2.0, qkv_bias: bool = True, patch_norm: bool = True,
                 resi_connection: str = "1conv", upsampler: str = "pixelshuffle", scale: int = 4, num_feat: int = 64,
                 img_range: float = 1.0):
        super().__init__()
        if upsampler != "pixelshuffle":
            raise UnsupportedVariant(f"HAT upsampler {upsampler!r} is not served (only pixelshuffle exists)")
        ws = self.window_size = int(window_size)
        self.scale, self.img_range = int(scale), float(img_range)
        mean = torch.tensor(DIV2K_RGB_MEAN) if num_in_ch == 3 else torch.zeros(num_in_ch)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("index_sa", relative_position_index(ws), persistent=False)
        self.register_buffer("index_oca", overlap_position_index(ws, overlap_window(ws, overlap_ratio)),
                             persistent=False)

        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            RHAG(embed_dim, d, h, ws, mlp_ratio, qkv_bias, compress_ratio, squeeze_factor, conv_scale, overlap_ratio,
                 resi_connection) for d, h in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
        self.upsample = Upsampler(self.scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_in_ch, 3, 1, 1)

    def forward_features(self, feat: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        mask = shifted_window_mask(h, w, self.window_size, self.window_size // 2, feat.device)
        x = self.patch_embed(feat.permute(0, 2, 3, 1))
        for layer in self.layers:
            x = layer(x, self.index_sa, self.index_oca, mask)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = (pad_to_multiple(x, self.window_size) - self.mean) * self.img_range
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        out = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        out = out / self.img_range + self.mean
        return out[..., : h * self.scale, : w * self.scale]


def convert_hat(sd: dict) -> dict:
    """Drops the relative-position index buffers the network recomputes."""
    return {k: v for k, v in sd.items() if k not in DERIVED_BUFFERS}


def ratio_giving(dim: int, width: int) -> int:
    """An integer r with ``dim // r == width`` (compress_ratio / squeeze_factor from a conv width),
    ``dim / width`` when that divides (every release: 180/60 = 3, 144/6 = 24, 180/6 = 30)."""
    for r in (dim // width, *range(max(1, dim // (width + 1)), dim // width + 2)):
        if dim // r == width:
            return r
    raise ValueError(f"no integer ratio turns {dim} channels into {width}")


def overlap_ratio_of(ws: int, table: torch.Tensor) -> float:
    side = round(table.shape[0] ** 0.5)
    ows = side - ws + 1
    if side * side != table.shape[0] or ows < ws:
        raise ValueError(f"OCAB relative position table of {table.shape[0]} rows does not fit window {ws}")
    for ratio in (0.5, 0.25, 0.75, 0.0, 1.0, (ows - ws) / ws):  # the published ratio first
        if overlap_window(ws, ratio) == ows:
            return ratio
    return (ows - ws + 0.5) / ws


def detect_hat(sd: dict) -> dict | None:
    sd = convert_hat(sd)
    b0 = BLOCK.format(0, 0)
    required = ("conv_first.weight", b0 + "conv_block.cab.0.weight", b0 + "attn.relative_position_bias_table",
                OVERLAP.format(0) + "relative_position_bias_table", "conv_last.weight")
    if not all(k in sd for k in required):
        return None
    if "absolute_pos_embed" in sd:
        raise UnsupportedVariant("HAT with an absolute position embedding (fixed image size) is not served")
    embed_dim = sd["conv_first.weight"].shape[0]
    groups = count_indexed(sd, OVERLAP + "relative_position_bias_table")
    ws = window_size_of(sd[b0 + "attn.relative_position_bias_table"])
    num_feat = sd["conv_last.weight"].shape[1]
    return {
        "num_in_ch": sd["conv_first.weight"].shape[1],
        "embed_dim": embed_dim,
        "depths": [count_indexed(sd, BLOCK.format(i, "{}") + "norm1.weight") for i in range(groups)],
        "num_heads": [sd[BLOCK.format(i, 0) + "attn.relative_position_bias_table"].shape[1] for i in range(groups)],
        "window_size": ws,
        "compress_ratio": ratio_giving(embed_dim, sd[b0 + "conv_block.cab.0.weight"].shape[0]),
        "squeeze_factor": ratio_giving(embed_dim, sd[b0 + "conv_block.cab.3.attention.1.weight"].shape[0]),
        "conv_scale": 0.01,  # a constant, not stored; every release uses 0.01
        "overlap_ratio": overlap_ratio_of(ws, sd[OVERLAP.format(0) + "relative_position_bias_table"]),
        "mlp_ratio": sd[b0 + "mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": b0 + "attn.qkv.bias" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
        "upsampler": "pixelshuffle",
        "scale": upsampler_scale(sd, "upsample.", num_feat),
        "num_feat": num_feat,
        "img_range": 1.0,
    }


def hat_activation_maps(h: dict, scale: int) -> float:
    """Per LR pixel in the busiest block: window attention (2·heads·ws² logits + softmax) or the
    OCAB (2·heads·ows² and the unfolded keys/values 2·C·(ows/ws)²), plus q/k/v, the residual
    stream, norms, the CAB and the MLP; or the HR head."""
    h = {**DEFAULTS, **h}
    c, heads, ws = h["embed_dim"], max(h["num_heads"]), h["window_size"]
    ows = overlap_window(ws, h["overlap_ratio"])
    attention = max(2 * heads * ws * ws, 2 * heads * ows * ows + 2 * c * (ows / ws) ** 2)
    body = attention + 8 * c + c * h["mlp_ratio"] + ws * ws
    head = 3 * h["num_feat"] * scale * scale
    return max(body, head) + 6 * scale * scale + 3
