"""Official-layout checkpoints of the community architectures (SRVGGNetCompact, SPAN, SwinIR, HAT),
written from the official repositories' key layouts, not from our modules, with seeded random
values; and naive functional re-implementations of their forward passes that read those keys.

The layouts include what the official files carry besides parameters (SwinIR's per-block
``relative_position_index`` and shifted blocks' ``attn_mask`` for the training patch size, HAT's
``relative_position_index_SA``/``_OCA``), with the values the official code computes, written
here as plain loops. The references loop over windows and tokens with explicit index arithmetic
(no roll, unfold or window partition), so a wrong key, head split, shift, mask, bias index,
overlap window, padding or crop in ``models/`` makes them disagree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)  # DIV2K RGB mean of the official models


# --- layouts -------------------------------------------------------------------------------------
def conv(name: str, out: int, inp: int, k: int) -> dict:
    return {f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)}


def linear(name: str, out: int, inp: int) -> dict:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def norm(name: str, dim: int) -> dict:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def srvgg_layout(num_feat: int, num_conv: int, scale: int, prelu: bool = True) -> dict:
    """``body.{2k}`` convs, ``body.{2k+1}`` PReLU slopes (absent for ReLU/LeakyReLU)."""
    layout = conv("body.0", num_feat, 3, 3)
    for i in range(num_conv + 1):
        if prelu:
            layout[f"body.{2 * i + 1}.weight"] = (num_feat,)
        if i < num_conv:
            layout |= conv(f"body.{2 * i + 2}", num_feat, num_feat, 3)
    return layout | conv(f"body.{2 * num_conv + 2}", 3 * scale * scale, num_feat, 3)


def conv3xc(name: str, c_in: int, c_out: int) -> dict:
    return (conv(f"{name}.sk", c_out, c_in, 1) | conv(f"{name}.conv.0", 2 * c_in, c_in, 1)
            | conv(f"{name}.conv.1", 2 * c_out, 2 * c_in, 3) | conv(f"{name}.conv.2", c_out, 2 * c_out, 1)
            | conv(f"{name}.eval_conv", c_out, c_in, 3))


def span_layout(ch: int, scale: int) -> dict:
    layout = conv3xc("conv_1", 3, ch)
    for b in range(1, 7):
        for c in ("c1_r", "c2_r", "c3_r"):
            layout |= conv3xc(f"block_{b}.{c}", ch, ch)
    return layout | conv("conv_cat", ch, 4 * ch, 1) | conv3xc("conv_2", ch, ch) | conv("upsampler.0", 3 * scale**2, ch, 3)


def official_rpi(ws: int) -> torch.Tensor:
    """SwinIR's ``relative_position_index``: (Δrow + ws-1)·(2ws-1) + Δcol + ws-1, query minus key."""
    out = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for i in range(ws * ws):
        for j in range(ws * ws):
            out[i, j] = (i // ws - j // ws + ws - 1) * (2 * ws - 1) + (i % ws - j % ws + ws - 1)
    return out


def official_oca_rpi(ws: int, ows: int) -> torch.Tensor:
    """HAT's ``relative_position_index_OCA``: key minus query, shifted by ws-ows+1 (negative for
    part of the pairs, as in the official code)."""
    out = torch.empty(ws * ws, ows * ows, dtype=torch.long)
    for i in range(ws * ws):
        for j in range(ows * ows):
            out[i, j] = ((j // ows - i // ws + ws - ows + 1) * (ws + ows - 1) + (j % ows - i % ws + ws - ows + 1))
    return out


def region(r: int, n: int, ws: int, shift: int) -> int:
    """Which of the three shifted-window regions row/column r of an n-long axis is in."""
    return 0 if r < n - ws else (1 if r < n - shift else 2)


def official_attn_mask(size: int, ws: int) -> torch.Tensor:
    """SwinIR's ``attn_mask`` buffer of a shifted block for the training patch size."""
    shift, n = ws // 2, size // ws
    mask = torch.zeros(n * n, ws * ws, ws * ws)
    for wr in range(n):
        for wc in range(n):
            labels = [3 * region(wr * ws + t // ws, size, ws, shift) + region(wc * ws + t % ws, size, ws, shift)
                      for t in range(ws * ws)]
            for i in range(ws * ws):
                for j in range(ws * ws):
                    mask[wr * n + wc, i, j] = 0.0 if labels[i] == labels[j] else -100.0
    return mask


def resi_layout(name: str, dim: int, kind: str) -> dict:
    if kind == "1conv":
        return conv(name, dim, dim, 3)
    if kind == "3conv":
        return conv(f"{name}.0", dim // 4, dim, 3) | conv(f"{name}.2", dim // 4, dim // 4, 1) | conv(f"{name}.4", dim, dim // 4, 3)
    return {}  # HAT's identity


def transformer_block(p: str, dim: int, heads: int, table_rows: int, mlp_ratio: float) -> dict:
    return (norm(p + "norm1", dim) | {p + "attn.relative_position_bias_table": (table_rows, heads)}
            | linear(p + "attn.qkv", 3 * dim, dim) | linear(p + "attn.proj", dim, dim) | norm(p + "norm2", dim)
            | linear(p + "mlp.fc1", int(dim * mlp_ratio), dim) | linear(p + "mlp.fc2", dim, int(dim * mlp_ratio)))


def pixelshuffle_head(dim: int, scale: int, num_feat: int) -> dict:
    layout = conv("conv_before_upsample.0", num_feat, dim, 3)
    if scale == 3:
        layout |= conv("upsample.0", 9 * num_feat, num_feat, 3)
    else:
        for k in range(int(math.log2(scale))):
            layout |= conv(f"upsample.{2 * k}", 4 * num_feat, num_feat, 3)
    return layout | conv("conv_last", 3, num_feat, 3)


def swinir_layout(embed: int, depths: list[int], heads: list[int], ws: int, mlp_ratio: float, upsampler: str,
                  scale: int, resi: str = "1conv", num_feat: int = 64, img_size: int = 64) -> dict:
    layout = conv("conv_first", embed, 3, 3) | norm("patch_embed.norm", embed)
    rpi, mask = official_rpi(ws), official_attn_mask(img_size, ws)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            layout |= transformer_block(p, embed, h, (2 * ws - 1) ** 2, mlp_ratio)
            layout[p + "attn.relative_position_index"] = rpi
            if j % 2:
                layout[p + "attn_mask"] = mask
        layout |= resi_layout(f"layers.{i}.conv", embed, resi)
    layout |= norm("norm", embed) | resi_layout("conv_after_body", embed, resi)
    if upsampler == "pixelshuffle":
        return layout | pixelshuffle_head(embed, scale, num_feat)
    if upsampler == "pixelshuffledirect":
        return layout | conv("upsample.0", 3 * scale * scale, embed, 3)
    layout |= conv("conv_before_upsample.0", num_feat, embed, 3) | conv("conv_up1", num_feat, num_feat, 3)
    if scale == 4:
        layout |= conv("conv_up2", num_feat, num_feat, 3)
    return layout | conv("conv_hr", num_feat, num_feat, 3) | conv("conv_last", 3, num_feat, 3)


def hat_layout(embed: int, depths: list[int], heads: list[int], ws: int, compress: int, squeeze: int,
               mlp_ratio: float, scale: int, overlap_ratio: float = 0.5, num_feat: int = 64) -> dict:
    ows = int(ws * overlap_ratio) + ws
    layout = {"relative_position_index_SA": official_rpi(ws), "relative_position_index_OCA": official_oca_rpi(ws, ows)}
    layout |= conv("conv_first", embed, 3, 3) | norm("patch_embed.norm", embed)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            layout |= transformer_block(p, embed, h, (2 * ws - 1) ** 2, mlp_ratio)
            layout |= (conv(p + "conv_block.cab.0", embed // compress, embed, 3)
                       | conv(p + "conv_block.cab.2", embed, embed // compress, 3)
                       | conv(p + "conv_block.cab.3.attention.1", embed // squeeze, embed, 1)
                       | conv(p + "conv_block.cab.3.attention.3", embed, embed // squeeze, 1))
        o = f"layers.{i}.residual_group.overlap_attn."
        layout |= (norm(o + "norm1", embed) | linear(o + "qkv", 3 * embed, embed)
                   | {o + "relative_position_bias_table": ((ws + ows - 1) ** 2, h)} | linear(o + "proj", embed, embed)
                   | norm(o + "norm2", embed) | linear(o + "mlp.fc1", int(embed * mlp_ratio), embed)
                   | linear(o + "mlp.fc2", embed, int(embed * mlp_ratio)))
        layout |= conv(f"layers.{i}.conv", embed, embed, 3)
    return layout | norm("norm", embed) | conv("conv_after_body", embed, embed, 3) | pixelshuffle_head(embed, scale, num_feat)


def fill(layout: dict, seed: int) -> dict:
    """Seeded values: fan-in scaled weights, LayerNorm gains near 1, small biases, O(1) position
    biases; buffers (tensors in the layout) as they are."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if isinstance(shape, torch.Tensor):
            state[key] = shape
        elif key.endswith("relative_position_bias_table"):
            state[key] = torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif "norm" in key and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


# --- references ------------------------------------------------------------------------------------
def conv_ref(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)


def srvgg_ref(sd: dict, x: torch.Tensor, scale: int, act: str = "prelu") -> torch.Tensor:
    """The official loop: conv, activation, ..., conv; pixel shuffle; plus nearest-upsampled input."""
    last = max(int(k.split(".")[1]) for k in sd)
    out = x
    for i in range(0, last + 1, 2):
        out = conv_ref(out, sd, f"body.{i}")
        if i < last:
            out = {"prelu": lambda t: F.prelu(t, sd[f"body.{i + 1}.weight"]), "relu": F.relu,
                   "leakyrelu": lambda t: F.leaky_relu(t, 0.1)}[act](out)
    return F.pixel_shuffle(out, scale) + x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def conv3xc_ref(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    """Conv3XC's training-mode branches: sk(x) + conv.2(conv.1(conv.0(zero-pad(x))))."""
    branch = F.conv2d(F.pad(x, (1, 1, 1, 1)), sd[f"{name}.conv.0.weight"], sd[f"{name}.conv.0.bias"])
    branch = F.conv2d(branch, sd[f"{name}.conv.1.weight"], sd[f"{name}.conv.1.bias"])
    branch = F.conv2d(branch, sd[f"{name}.conv.2.weight"], sd[f"{name}.conv.2.bias"])
    return branch + F.conv2d(x, sd[f"{name}.sk.weight"], sd[f"{name}.sk.bias"])


def span_ref(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    x = (x - MEAN) * 255.0
    first = conv3xc_ref(x, sd, "conv_1")
    out, outs = first, []
    for b in range(1, 7):
        p = f"block_{b}."
        out1 = conv3xc_ref(out, sd, p + "c1_r")
        out3 = conv3xc_ref(F.silu(conv3xc_ref(F.silu(out1), sd, p + "c2_r")), sd, p + "c3_r")
        out = (out3 + out) * (torch.sigmoid(out3) - 0.5)
        outs.append((out, out1))
    cat = torch.cat([first, conv3xc_ref(out, sd, "conv_2"), outs[0][0], outs[5][1]], 1)
    return F.pixel_shuffle(conv_ref(conv_ref(cat, sd, "conv_cat"), sd, "upsampler.0"), scale)


def reflect_pad_ref(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Bottom/right padding to a multiple, mirrored about the last row/column (numpy 'reflect')."""
    h, w = x.shape[-2:]
    rows = [i if i < h else 2 * (h - 1) - i for i in range(h + (-h) % multiple)]
    cols = [j if j < w else 2 * (w - 1) - j for j in range(w + (-w) % multiple)]
    return x[:, :, rows][:, :, :, cols]


def layer_norm(t: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def dense(t: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return t @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias) -> torch.Tensor:
    """nq×c queries, n×c keys/values; ``bias(head, i, j)`` gives the additive logit term."""
    c = q.shape[-1]
    d = c // heads
    out = torch.empty_like(q)
    for hd in range(heads):
        sl = slice(hd * d, (hd + 1) * d)
        logits = (q[:, sl] * d ** -0.5) @ k[:, sl].T
        logits = logits + torch.tensor([[bias(hd, i, j) for j in range(k.shape[0])] for i in range(q.shape[0])])
        out[:, sl] = logits.softmax(-1) @ v[:, sl]
    return out


def swin_attention_ref(z: torch.Tensor, sd: dict, p: str, heads: int, ws: int, shift: int) -> torch.Tensor:
    """Window attention of normed tokens z (h×w×c, one image). With a shift, window (wr, wc) holds
    the tokens at ((wr·ws + a + shift) mod h, ...) and pairs from different regions get -100."""
    h, w, c = z.shape
    table = sd[p + "attn.relative_position_bias_table"]
    out = torch.empty_like(z)
    for wr in range(h // ws):
        for wc in range(w // ws):
            pos = [((wr * ws + t // ws + shift) % h, (wc * ws + t % ws + shift) % w) for t in range(ws * ws)]
            label = [3 * region(wr * ws + t // ws, h, ws, shift) + region(wc * ws + t % ws, w, ws, shift)
                     if shift else 0 for t in range(ws * ws)]
            tokens = torch.stack([z[r, s] for r, s in pos])
            q, k, v = dense(tokens, sd, p + "attn.qkv").split(c, -1)

            def bias(hd, i, j):
                index = (i // ws - j // ws + ws - 1) * (2 * ws - 1) + (i % ws - j % ws + ws - 1)
                return float(table[index, hd]) + (0.0 if label[i] == label[j] else -100.0)

            result = dense(attend(q, k, v, heads, bias), sd, p + "attn.proj")
            for t, (r, s) in enumerate(pos):
                out[r, s] = result[t]
    return out


def mlp_ref(t: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return dense(F.gelu(dense(t, sd, p + "fc1")), sd, p + "fc2")


def resi_ref(x: torch.Tensor, sd: dict, name: str, kind: str) -> torch.Tensor:
    if kind == "1conv":
        return conv_ref(x, sd, name)
    x = F.leaky_relu(conv_ref(x, sd, f"{name}.0"), 0.2)
    x = F.leaky_relu(conv_ref(x, sd, f"{name}.2"), 0.2)
    return conv_ref(x, sd, f"{name}.4")


def cab_ref(z: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    """HAT's CAB on h×w×c tokens: conv, GELU, conv, then RCAN channel attention."""
    x = z.permute(2, 0, 1)[None]
    x = conv_ref(F.gelu(conv_ref(x, sd, p + "cab.0")), sd, p + "cab.2")
    pooled = x.mean(dim=(2, 3))  # 1×c
    a = F.relu(pooled @ sd[p + "cab.3.attention.1.weight"][:, :, 0, 0].T + sd[p + "cab.3.attention.1.bias"])
    a = torch.sigmoid(a @ sd[p + "cab.3.attention.3.weight"][:, :, 0, 0].T + sd[p + "cab.3.attention.3.bias"])
    return (x * a[:, :, None, None])[0].permute(1, 2, 0)


def ocab_ref(y: torch.Tensor, sd: dict, p: str, heads: int, ws: int, ows: int) -> torch.Tensor:
    """Queries of each ws-window attend to the keys/values of the ows-window around it (zero
    vectors outside the image); bias index: key minus query, official shift, table wrap-around."""
    h, w, c = y.shape
    q, k, v = dense(layer_norm(y, sd, p + "norm1"), sd, p + "qkv").split(c, -1)
    table, pad, side = sd[p + "relative_position_bias_table"], (ows - ws) // 2, ws + ows - 1
    out = torch.empty_like(y)
    for wr in range(h // ws):
        for wc in range(w // ws):
            qpos = [(wr * ws + t // ws, wc * ws + t % ws) for t in range(ws * ws)]
            kpos = [(wr * ws - pad + t // ows, wc * ws - pad + t % ows) for t in range(ows * ows)]

            def gather(m, positions):
                return torch.stack([m[r, s] if 0 <= r < h and 0 <= s < w else torch.zeros(c) for r, s in positions])

            def bias(hd, i, j):
                index = (j // ows - i // ws + ws - ows + 1) * side + (j % ows - i % ws + ws - ows + 1)
                return float(table[index, hd])  # a negative index wraps, as torch indexing does

            result = attend(gather(q, qpos), gather(k, kpos), gather(v, kpos), heads, bias)
            for t, (r, s) in enumerate(qpos):
                out[r, s] = result[t]
    y = y + dense(out, sd, p + "proj")
    return y + mlp_ref(layer_norm(y, sd, p + "norm2"), sd, p + "mlp.")


def transformer_ref(sd: dict, x: torch.Tensor, h: dict, hat: bool) -> torch.Tensor:
    """SwinIR / HAT, one image: pad, mean, conv_first, groups, norm, conv_after_body, head, crop."""
    ws, s = h["window_size"], h["scale"]
    height, width = x.shape[-2:]
    feat = conv_ref((reflect_pad_ref(x, ws) - MEAN) * h.get("img_range", 1.0), sd, "conv_first")
    t = layer_norm(feat[0].permute(1, 2, 0), sd, "patch_embed.norm")
    resi = h.get("resi_connection", "1conv")
    for i, (depth, heads) in enumerate(zip(h["depths"], h["num_heads"])):
        y = t
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            z = layer_norm(y, sd, p + "norm1")
            y = y + swin_attention_ref(z, sd, p, heads, ws, (j % 2) * (ws // 2))
            if hat:
                y = y + 0.01 * cab_ref(z, sd, p + "conv_block.")
            y = y + mlp_ref(layer_norm(y, sd, p + "norm2"), sd, p + "mlp.")
        if hat:
            ows = ws + int(ws * h.get("overlap_ratio", 0.5))
            y = ocab_ref(y, sd, f"layers.{i}.residual_group.overlap_attn.", heads, ws, ows)
        t = resi_ref(y.permute(2, 0, 1)[None], sd, f"layers.{i}.conv", resi)[0].permute(1, 2, 0) + t
    body = layer_norm(t, sd, "norm").permute(2, 0, 1)[None]
    feat = resi_ref(body, sd, "conv_after_body", resi) + feat
    out = head_ref(sd, feat, h.get("upsampler", "pixelshuffle"), s)
    return (out / h.get("img_range", 1.0) + MEAN)[..., : height * s, : width * s]


def head_ref(sd: dict, feat: torch.Tensor, upsampler: str, s: int) -> torch.Tensor:
    if upsampler == "pixelshuffledirect":
        return F.pixel_shuffle(conv_ref(feat, sd, "upsample.0"), s)
    x = F.leaky_relu(conv_ref(feat, sd, "conv_before_upsample.0"), 0.01)
    if upsampler == "pixelshuffle":
        stages = [(0, 3)] if s == 3 else [(2 * k, 2) for k in range(int(math.log2(s)))]
        for index, r in stages:
            x = F.pixel_shuffle(conv_ref(x, sd, f"upsample.{index}"), r)
        return conv_ref(x, sd, "conv_last")
    for name in ("conv_up1", "conv_up2")[: int(math.log2(s))]:
        x = F.leaky_relu(conv_ref(x.repeat_interleave(2, -2).repeat_interleave(2, -1), sd, name), 0.2)
    return conv_ref(F.leaky_relu(conv_ref(x, sd, "conv_hr"), 0.2), sd, "conv_last")
