"""Shifted-window self-attention as SwinIR (and HAT, which builds on it) compute it.

Tokens are kept channel-last, ``b × h × w × c`` with ``h`` and ``w`` multiples of the window
size (the networks reflect-pad their input first). The official code flattens them to
``b × hw × c``; LayerNorm and the linear layers act on the channels alone, so the numbers are
the same. The relative-position indices and the shifted-window mask are functions of the
window size and the image size, computed here (the official checkpoints also store them as
buffers, for the training patch size; ``convert`` drops them). Everything is written with shape
arithmetic only, so the ONNX graph keeps dynamic height and width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASKED = -100.0  # the official mask value added to logits across a shifted-window seam


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pads the bottom and right of an N×C×H×W batch to multiples of ``multiple``
    (the official models' ``check_image_size``; the output is cropped back afterwards)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="reflect")


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """b×h×w×c -> (b·windows)×ws²×c, windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """The inverse of ``window_partition``."""
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def grid(size: int) -> torch.Tensor:
    """2×size² (row, column) coordinates of a size×size window, row-major."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()])


def relative_position_index(ws: int) -> torch.Tensor:
    """ws²×ws² index into the (2ws-1)² bias table: (Δrow + ws-1)·(2ws-1) + Δcol + ws-1."""
    coords = grid(ws)
    delta = coords[:, :, None] - coords[:, None, :] + (ws - 1)
    return delta[0] * (2 * ws - 1) + delta[1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """windows×ws²×ws² logit offsets for attention on the image rolled by ``-shift``: 0 between
    tokens of the same region, ``MASKED`` between tokens the roll brought together from opposite
    borders. Regions along each axis: ``[0, n-ws)``, ``[n-ws, n-shift)``, ``[n-shift, n)``."""
    def regions(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()

    label = (regions(h)[:, None] * 3 + regions(w)[None, :])[None, :, :, None]
    windows = window_partition(label, ws)[..., 0]  # windows×ws²
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * MASKED


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def mlp_hidden(dim: int, mlp_ratio: float) -> int:
    """The official ``int(dim · mlp_ratio)``, rounded instead so that a ratio read back from a
    stored width (``width / dim``) always gives that width again."""
    return round(dim * mlp_ratio)


def position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """heads×queries×keys bias gathered from a (positions × heads) table."""
    return table[index.reshape(-1)].view(index.shape[0], index.shape[1], -1).permute(2, 0, 1)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
    """q: B×nq×c, k/v: B×n×c (B = images·windows) -> B×nq×c. ``bias``: heads×nq×n;
    ``mask``: windows×nq×n, the same for every image of the batch."""
    big_b, nq, c = q.shape
    n = k.shape[1]
    d = c // heads
    q = q.reshape(big_b, nq, heads, d).transpose(1, 2) * d ** -0.5
    k = k.reshape(big_b, n, heads, d).transpose(1, 2)
    v = v.reshape(big_b, n, heads, d).transpose(1, 2)
    logits = q @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        windows = mask.shape[0]
        logits = (logits.view(-1, windows, heads, nq, n) + mask[None, :, None]).view(big_b, heads, nq, n)
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(big_b, nq, c)


class WindowAttention(nn.Module):
    """W-MSA with a learned relative-position bias (keys ``relative_position_bias_table``,
    ``qkv``, ``proj``); the index comes from the network, shared by all blocks."""

    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        bias = position_bias(self.relative_position_bias_table, index)
        return self.proj(multi_head_attention(q, k, v, self.heads, bias, mask))


class SwinBlock(nn.Module):
    """LayerNorm → (shifted) window attention → residual; LayerNorm → MLP → residual.
    Odd blocks of a group shift by half a window (the official alternation)."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float, qkv_bias: bool = True):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden(dim, mlp_ratio))

    def attend(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Window attention of the normalised tokens x (b×h×w×c), shifted when this block shifts."""
        b, h, w, _ = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        out = self.attn(window_partition(x, self.ws), index, mask if self.shift else None)
        out = window_merge(out, self.ws, b, h, w)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return out

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(self.norm1(x), index, mask)
        return x + self.mlp(self.norm2(x))


class ResidualGroup(nn.Module):
    """``residual_group.blocks``: the blocks of one RSTB (SwinIR) / RHAG (HAT)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class PatchEmbed(nn.Module):
    """``patch_embed``: with patch size 1 only the optional LayerNorm of the tokens remains."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing a group and the body: ``1conv``, ``3conv`` (3×3 to dim/4, 1×1,
    3×3 back, LeakyReLU 0.2 between; SwinIR-L) or ``identity`` (HAT)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim // 4, 1),
                             nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim, 3, 1, 1))
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"resi_connection must be 1conv, 3conv or identity, got {kind!r}")


def conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Applies an image-space module to b×h×w×c tokens."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def window_size_of(table: torch.Tensor) -> int:
    """ws from a (2ws-1)²×heads relative-position bias table."""
    side = round(table.shape[0] ** 0.5)
    if side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(f"relative position table of {table.shape[0]} rows is not (2·ws-1)²")
    return (side + 1) // 2
