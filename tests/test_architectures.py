"""Golden tests: our networks against small independent functional re-implementations that read
the weights by the *official* key names; detection round trips; the other key layouts.

The references below use only ``F.conv2d``/``F.linear`` and reshapes written here, so a wrong key
mapping (KeyError or shape error), MeanShift, upsampler channel order, pixel-unshuffle order or an
ignored DASR encoder makes them disagree with the networks.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from srserve.models.registry import build_network, detect, load_network

DIV2K_MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)  # EDSR-PyTorch's rgb_mean


# --- helpers written for the tests -----------------------------------------------------------
def randomize(net: torch.nn.Module, seed: int = 0) -> dict:
    """Fills every weight with fan-in scaled noise (BN statistics positive where they must be),
    keeping MeanShift's fixed constants; puts ``net`` in eval mode; returns the state dict."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if "sub_mean" in key or "add_mean" in key or key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        elif value.dim() >= 2:
            state[key] = torch.randn(value.shape, generator=g) / math.sqrt(value[0].numel())
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.1
    net.load_state_dict(state)
    net.eval()
    return state


def conv(x, sd, key, stride=1):
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd.get(f"{key}.bias"), stride=stride, padding=w.shape[-1] // 2)


def pixel_shuffle_ref(x, r):
    """Out channel c, sub-pixel (i, j) <- in channel c*r*r + i*r + j (ESPCN / torch order)."""
    b, c, h, w = x.shape
    return x.reshape(b, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), h * r, w * r)


def pixel_unshuffle_ref(x, r):
    """BasicSR's ``pixel_unshuffle``: channel c*r*r + i*r + j <- pixel (h*r + i, w*r + j) of c."""
    b, c, hh, ww = x.shape
    return x.reshape(b, c, hh // r, r, ww // r, r).permute(0, 1, 3, 5, 2, 4).reshape(b, c * r * r, hh // r, ww // r)


def upsampler_ref(x, sd, prefix, scale):
    if scale == 3:
        return pixel_shuffle_ref(conv(x, sd, f"{prefix}.0"), 3)
    for stage in range(int(math.log2(scale))):
        x = pixel_shuffle_ref(conv(x, sd, f"{prefix}.{2 * stage}"), 2)
    return x


def lrelu(x, slope):
    return torch.where(x >= 0, x, slope * x)


# --- references ------------------------------------------------------------------------------
def edsr_ref(x, sd, n_resblocks, scale, res_scale):
    mean = 255 * DIV2K_MEAN
    head = conv(x - mean, sd, "head.0")
    res = head
    for i in range(n_resblocks):
        res = res + res_scale * conv(F.relu(conv(res, sd, f"body.{i}.body.0")), sd, f"body.{i}.body.2")
    res = conv(res, sd, f"body.{n_resblocks}") + head
    return conv(upsampler_ref(res, sd, "tail.0", scale), sd, "tail.1") + mean


def mdsr_ref(x, sd, n_resblocks, head_index, scale):
    mean = 255 * DIV2K_MEAN
    x = conv(x - mean, sd, "head.0")
    for j in range(2):  # two 5x5 residual blocks for this scale
        p = f"pre_process.{head_index}.{j}.body"
        x = x + conv(F.relu(conv(x, sd, f"{p}.0")), sd, f"{p}.2")
    res = x
    for i in range(n_resblocks):
        res = res + conv(F.relu(conv(res, sd, f"body.{i}.body.0")), sd, f"body.{i}.body.2")
    res = conv(res, sd, f"body.{n_resblocks}") + x
    return conv(upsampler_ref(res, sd, f"upsample.{head_index}", scale), sd, "tail.0") + mean


def vdsr_ref(y, sd, num_layers):
    out = F.relu(conv(y, sd, "input"))
    for i in range(num_layers - 2):
        out = F.relu(conv(out, sd, f"residual_layer.{i}.conv"))
    return conv(out, sd, "output") + y


def rdb_ref(x, sd, p):
    feats = [x]
    for j in range(1, 5):
        feats.append(lrelu(conv(torch.cat(feats, 1), sd, f"{p}.conv{j}"), 0.2))
    return conv(torch.cat(feats, 1), sd, f"{p}.conv5") * 0.2 + x


def rrdbnet_ref(x, sd, num_block, scale):
    """BasicSR RRDBNet; the x2/x1 variants pixel-unshuffle the input by 2/4 first."""
    if scale < 4:
        x = pixel_unshuffle_ref(x, 4 // scale)
    feat = conv(x, sd, "conv_first")
    body = feat
    for i in range(num_block):
        out = body
        for k in (1, 2, 3):
            out = rdb_ref(out, sd, f"body.{i}.rdb{k}")
        body = out * 0.2 + body
    feat = feat + conv(body, sd, "conv_body")
    for up in ("conv_up1", "conv_up2"):  # nearest x2 *then* conv
        feat = lrelu(conv(feat.repeat_interleave(2, 2).repeat_interleave(2, 3), sd, up), 0.2)
    return conv(lrelu(conv(feat, sd, "conv_hr"), 0.2), sd, "conv_last")


def dasr_encoder_ref(x, sd):
    """LongguangWang/DASR ``Encoder``: 6 x (conv, BN, LeakyReLU 0.1), strides 1,1,2,1,2,1, then the
    global average pool -> ``fea``."""
    p = "E.encoder_q.E"
    for i, stride in enumerate((1, 1, 2, 1, 2, 1)):
        x = conv(x, sd, f"{p}.{3 * i}", stride=stride)
        bn = f"{p}.{3 * i + 1}"
        rm, rv = sd[f"{bn}.running_mean"].view(1, -1, 1, 1), sd[f"{bn}.running_var"].view(1, -1, 1, 1)
        x = (x - rm) / torch.sqrt(rv + 1e-5) * sd[f"{bn}.weight"].view(1, -1, 1, 1) + sd[f"{bn}.bias"].view(1, -1, 1, 1)
        x = lrelu(x, 0.1)
    return x.mean(dim=(2, 3))


def da_conv_ref(x, deg, sd, p):
    """DA conv: a per-sample depth-wise 3x3 kernel from the degradation (looped over the batch on
    purpose), LeakyReLU, 1x1 conv; plus x times the channel attention of the degradation."""
    b, c, h, w = x.shape
    kernels = F.linear(lrelu(F.linear(deg, sd[f"{p}.kernel.0.weight"]), 0.1), sd[f"{p}.kernel.2.weight"])
    out = torch.cat([F.conv2d(x[i:i + 1], kernels[i].view(c, 1, 3, 3), groups=c, padding=1) for i in range(b)])
    out = conv(lrelu(out, 0.1), sd, f"{p}.conv")
    att = torch.sigmoid(F.linear(lrelu(F.linear(deg, sd[f"{p}.ca.conv_du.0.weight"].flatten(1)), 0.1),
                                 sd[f"{p}.ca.conv_du.2.weight"].flatten(1)))
    return out + x * att[:, :, None, None]


def dasr_sr_ref(x, deg, sd, n_groups, n_blocks, scale):
    mean = 255 * DIV2K_MEAN
    deg = lrelu(F.linear(deg, sd["G.compress.0.weight"]), 0.1)
    head = conv(x - mean, sd, "G.head.0")
    res = head
    for g in range(n_groups):
        group_in = res
        for b in range(n_blocks):
            p = f"G.body.{g}.body.{b}"
            out = lrelu(da_conv_ref(res, deg, sd, f"{p}.da_conv1"), 0.1)
            out = lrelu(conv(out, sd, f"{p}.conv1"), 0.1)
            out = lrelu(da_conv_ref(out, deg, sd, f"{p}.da_conv2"), 0.1)
            res = conv(out, sd, f"{p}.conv2") + res
        res = conv(res, sd, f"G.body.{g}.body.{n_blocks}") + group_in
    res = conv(res, sd, f"G.body.{n_groups}") + head
    return conv(upsampler_ref(res, sd, "G.tail.0", scale), sd, "G.tail.1") + mean


def close(a, b, scale=1.0):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


# --- golden tests ----------------------------------------------------------------------------
def lr_image(h=6, w=7, seed=0, channels=3, value_range=255.0):
    return torch.rand(2, channels, h, w, generator=torch.Generator().manual_seed(seed)) * value_range


@pytest.mark.parametrize("n_resblocks,n_feats,res_scale,scale", [(2, 8, 1.0, 2), (1, 4, 0.1, 3), (2, 4, 1.0, 4)])
def test_edsr_matches_reference(n_resblocks, n_feats, res_scale, scale):
    net = build_network("edsr", {"n_resblocks": n_resblocks, "n_feats": n_feats, "res_scale": res_scale, "scale": scale})
    sd = randomize(net)
    x = lr_image()
    with torch.no_grad():
        assert close(net(x), edsr_ref(x, sd, n_resblocks, scale, res_scale), 255)


@pytest.mark.parametrize("scales", [[2, 3, 4], [4, 2]])
def test_mdsr_matches_reference_for_every_head(scales):
    net = build_network("mdsr", {"n_resblocks": 2, "n_feats": 8, "scales": scales})
    sd = randomize(net)
    x = lr_image()
    with torch.no_grad():
        for index, scale in enumerate(scales):
            assert close(net(x, scale), mdsr_ref(x, sd, 2, index, scale), 255)


def test_vdsr_matches_reference():
    net = build_network("vdsr", {"num_layers": 5, "n_feats": 8})
    sd = randomize(net)
    y = lr_image(channels=1, value_range=1.0)
    with torch.no_grad():
        assert close(net(y), vdsr_ref(y, sd, 5))


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdbnet_matches_reference(scale):
    net = build_network("rrdbnet", {"scale": scale, "num_feat": 8, "num_block": 2, "num_grow_ch": 4})
    sd = randomize(net)
    x = lr_image(8, 12, value_range=1.0)
    with torch.no_grad():
        out = net(x)
        assert out.shape[-2:] == (8 * scale, 12 * scale)
        assert close(out, rrdbnet_ref(x, sd, 2, scale))


def test_dasr_matches_reference_and_uses_its_encoder():
    net = build_network("dasr", {"n_groups": 2, "n_blocks": 2, "n_feats": 8, "reduction": 4, "scale": 2})
    sd = randomize(net)
    x = lr_image(8, 8)
    with torch.no_grad():
        fea = dasr_encoder_ref(x, sd)
        assert close(net.degradation(x), fea)
        expected = dasr_sr_ref(x, fea, sd, 2, 2, 2)
        assert close(net(x), expected, 255)  # the encoder's estimate feeds the SR net
        assert close(net(x, fea), expected, 255)


def test_dasr_output_depends_on_the_degradation():
    """Another degradation vector, or an input with another degradation, changes the result."""
    net = build_network("dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4, "scale": 2})
    randomize(net)
    sharp = lr_image(12, 12)[:1]
    blurred = F.avg_pool2d(F.pad(sharp, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noisy = sharp + 25 * torch.randn(sharp.shape, generator=torch.Generator().manual_seed(5))
    # BN statistics of these images, as training leaves them (random ones drown the features in the DC level)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net.train().degradation(torch.cat([sharp, blurred, noisy]))
        net.eval()
        own = net.degradation(sharp)
        assert torch.equal(net(sharp), net(sharp, own))
        for degraded in (blurred, noisy):
            other = net.degradation(degraded)
            assert (own - other).norm() > 0.05 * own.norm()
            assert (net(sharp, own) - net(sharp, other)).abs().max() > 0.1  # on a 0..255 scale


def test_meanshift_subtracts_and_adds_the_div2k_mean():
    """EDSR-PyTorch's MeanShift with rgb_range 255: sub_mean(v) = v - 255*mean, add_mean the inverse."""
    for net in (build_network("edsr", {"n_resblocks": 1, "n_feats": 4}),
                build_network("mdsr", {"n_resblocks": 1, "n_feats": 4, "scales": [2]}),
                build_network("dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4}).G):
        constant = torch.full((1, 3, 2, 2), 100.0)
        with torch.no_grad():
            assert torch.allclose(net.sub_mean(constant), 100.0 - 255 * DIV2K_MEAN.expand(1, 3, 2, 2), atol=1e-4)
            assert torch.allclose(net.add_mean(constant), 100.0 + 255 * DIV2K_MEAN.expand(1, 3, 2, 2), atol=1e-4)


def test_pixel_shuffle_reference_order():
    """The reference itself, on numbers you can read: channel c*r*r + i*r + j lands at (i, j)."""
    x = torch.arange(8.0).view(1, 8, 1, 1)  # two output channels, r = 2
    assert pixel_shuffle_ref(x, 2)[0].tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert torch.equal(pixel_unshuffle_ref(pixel_shuffle_ref(x, 2), 2), x)


# --- detection round trips -------------------------------------------------------------------
ROUND_TRIPS = [
    *[("vdsr", {"num_layers": n, "n_feats": f}) for n, f in [(3, 4), (5, 8), (7, 4)]],
    *[("edsr", {"n_resblocks": r, "n_feats": f, "scale": s}) for r, f, s in
      [(1, 8, 2), (2, 4, 3), (3, 8, 4), (1, 4, 8), (4, 12, 2)]],
    *[("mdsr", {"n_resblocks": r, "n_feats": f, "scales": sc}) for r, f, sc in
      [(1, 8, [2, 3, 4]), (2, 4, [2]), (1, 4, [4, 3]), (3, 8, [3])]],
    *[("rrdbnet", {"scale": s, "num_feat": f, "num_block": b, "num_grow_ch": g}) for s, f, b, g in
      [(4, 8, 1, 4), (4, 4, 2, 2), (2, 8, 1, 4), (2, 4, 3, 6), (1, 8, 2, 4), (1, 4, 1, 2)]],
    ("rrdbnet", {"scale": 4, "num_feat": 4, "num_block": 1, "num_grow_ch": 2, "num_in_ch": 1, "num_out_ch": 1}),
    *[("dasr", {"n_groups": g, "n_blocks": b, "n_feats": f, "reduction": r, "scale": s}) for g, b, f, r, s in
      [(1, 1, 8, 4, 2), (2, 1, 8, 2, 3), (1, 2, 16, 8, 4), (2, 2, 8, 4, 2)]],
]


def run_any(arch, net, hparams, x):
    with torch.no_grad():
        if arch == "mdsr":
            return torch.cat([net(x, s).flatten() for s in hparams["scales"]])
        if arch == "vdsr" or hparams.get("num_in_ch") == 1:
            return net(x[:, :1])
        return net(x)


@pytest.mark.parametrize("arch,hparams", ROUND_TRIPS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{v}" for k, v in v.items()))
def test_round_trip_build_detect_load(arch, hparams):
    net = build_network(arch, hparams)
    state = randomize(net, seed=3)
    detected_arch, detected = detect(state)
    assert detected_arch == arch
    assert {k: detected[k] for k in hparams} == hparams
    _, _, loaded = load_network(state)
    x = lr_image(8, 8)
    assert torch.equal(run_any(arch, net.eval(), hparams, x), run_any(arch, loaded, hparams, x))


def test_edsr_paper_model_is_detected_with_res_scale_0_1():
    """r32f256 means res_scale 0.1 in EDSR-PyTorch; shapes cannot show it (built on 'meta': no memory)."""
    with torch.device("meta"):
        state = build_network("edsr", {"n_resblocks": 32, "n_feats": 256, "scale": 4}).state_dict()
        arch, hparams = detect(state)
        assert (arch, hparams) == ("edsr", {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1, "scale": 4})
        assert build_network(arch, hparams).body[0].res_scale == 0.1
    with torch.device("meta"):  # the baseline keeps 1.0
        assert detect(build_network("edsr", {"n_resblocks": 16, "n_feats": 64}).state_dict())[1]["res_scale"] == 1.0


# --- other key layouts -----------------------------------------------------------------------
ESRGAN_REPO_NAMES = {"conv_first": "conv_first", "conv_body": "trunk_conv", "conv_up1": "upconv1",
                     "conv_up2": "upconv2", "conv_hr": "HRconv", "conv_last": "conv_last"}


def to_esrgan_repo_layout(sd):
    """xinntao/ESRGAN ``RRDBNet_arch.py``: RRDB_trunk.{i}.RDB{k}.conv{j}, trunk_conv, upconv1/2, HRconv."""
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.(conv\d\.(?:weight|bias))", key)
        if m:
            out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.{m[3]}"] = value
        else:
            module, param = key.split(".")
            out[f"{ESRGAN_REPO_NAMES[module]}.{param}"] = value
    return out


def to_old_arch_layout(sd, num_block):
    """The original ``RRDB_ESRGAN_x4_old_arch.pth`` (sequential ``model.N``)."""
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
             "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key)
        if m:
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        else:
            module, param = key.split(".")
            out[f"{names[module]}.{param}"] = value
    return out


@pytest.mark.parametrize("layout", ["esrgan-repo", "old-arch"])
def test_rrdbnet_other_layouts_load_to_the_same_network(layout):
    hparams = {"scale": 4, "num_feat": 8, "num_block": 2, "num_grow_ch": 4}
    net = build_network("rrdbnet", hparams)
    sd = randomize(net)
    other = to_esrgan_repo_layout(sd) if layout == "esrgan-repo" else to_old_arch_layout(sd, 2)
    assert not set(other) & set(sd) - {"conv_first.weight", "conv_first.bias", "conv_last.weight", "conv_last.bias"}
    arch, detected, loaded = load_network(other)
    assert arch == "rrdbnet" and {k: detected[k] for k in hparams} == hparams
    x = lr_image(6, 6, value_range=1.0)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))


def test_dasr_moco_key_encoder_and_queue_are_dropped():
    net = build_network("dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4, "scale": 2})
    sd = randomize(net)
    official = dict(sd)
    for key, value in sd.items():  # MoCo keeps a momentum copy of the query encoder...
        if key.startswith("E.encoder_q."):
            official["E.encoder_k." + key[len("E.encoder_q."):]] = torch.randn_like(value.float()).to(value.dtype)
    official["E.queue"] = torch.randn(256, 32)  # ...and a queue of negatives
    official["E.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    arch, _, loaded = load_network(official)
    x = lr_image(8, 8)
    with torch.no_grad():
        assert arch == "dasr" and torch.equal(loaded(x), net.eval()(x))
