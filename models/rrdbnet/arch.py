from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..common import count_indexed

# pixel-unshuffle factor of the x2/x1 variants: the trunk runs at LR/u
UNSHUFFLE = {4: 1, 2: 2, 1: 4}


def scale_init_(modules, factor: float = 0.1) -> None:
    """Kaiming init scaled by ``factor`` (ESRGAN's smaller initialisation for deep RRDB stacks)."""
    for m in modules:
        nn.init.kaiming_normal_(m.weight)
        m.weight.data.mul_(factor)
        if m.bias is not None:
            m.bias.data.zero_()


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        g = num_grow_ch
        self.conv1 = nn.Conv2d(num_feat, g, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + g, g, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * g, g, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * g, g, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * g, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        scale_init_([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """Scale 4: plain input. Scales 2 and 1 (Real-ESRGAN): the input is pixel-unshuffled by 2
    or 4 first, so ``conv_first`` takes 4x or 16x the channels; the trunk always upsamples x4."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scales 1, 2, 4; got {scale}")
        self.scale = scale
        self.unshuffle = UNSHUFFLE[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.unshuffle > 1:
            # reflect-pad to a multiple of the unshuffle factor (as Real-ESRGAN does), crop after
            u = self.unshuffle
            x = F.pixel_unshuffle(F.pad(x, (0, (-w) % u, 0, (-h) % u), mode="reflect"), u)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out[..., : h * self.scale, : w * self.scale]


# --- key layouts -------------------------------------------------------------------------
_ESRGAN_REPO = {
    "RRDB_trunk.": "body.", "trunk_conv.": "conv_body.", "upconv1.": "conv_up1.", "upconv2.": "conv_up2.",
    "HRconv.": "conv_hr.",
}


def _from_esrgan_repo(key: str) -> str:
    for old, new in _ESRGAN_REPO.items():
        if key.startswith(old):
            key = new + key[len(old):]
    return re.sub(r"\.RDB(\d)\.", r".rdb\1.", key)


def _from_old_arch(sd: dict) -> dict:
    """``model.0`` conv_first; ``model.1.sub.{i}.RDB{k}.conv{j}.0`` blocks; ``model.1.sub.{N}``
    trunk conv; ``model.3``/``model.6`` upconvs; ``model.8`` HR conv; ``model.10`` last conv."""
    n_blocks = count_indexed(sd, "model.1.sub.{}.RDB1.conv1.0.weight")
    fixed = {"model.0.": "conv_first.", f"model.1.sub.{n_blocks}.": "conv_body.", "model.3.": "conv_up1.",
             "model.6.": "conv_up2.", "model.8.": "conv_hr.", "model.10.": "conv_last."}
    out = {}
    for key, value in sd.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
            continue
        for old, new in fixed.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            out[key] = value
    return out


def convert_rrdbnet(sd: dict) -> dict:
    if "model.0.weight" in sd:
        return _from_old_arch(sd)
    if "RRDB_trunk.0.RDB1.conv1.weight" in sd or "trunk_conv.weight" in sd:
        return {_from_esrgan_repo(k): v for k, v in sd.items()}
    return sd


def detect_rrdbnet(sd: dict) -> dict | None:
    sd = convert_rrdbnet(sd)
    if "conv_first.weight" not in sd or "body.0.rdb1.conv1.weight" not in sd:
        return None
    in_ch = sd["conv_first.weight"].shape[1]
    scale = {3: 4, 1: 4, 12: 2, 4: 2, 48: 1, 16: 1}.get(in_ch)
    if scale is None:
        return None
    base_in = in_ch // {4: 1, 2: 4, 1: 16}[scale]
    return {
        "num_in_ch": base_in,
        "num_out_ch": sd["conv_last.weight"].shape[0],
        "scale": scale,
        "num_feat": sd["conv_first.weight"].shape[0],
        "num_block": count_indexed(sd, "body.{}.rdb1.conv1.weight"),
        "num_grow_ch": sd["body.0.rdb1.conv1.weight"].shape[0],
    }


def rrdbnet_receptive_radius(h: dict) -> float:
    """Theoretical radius in LR pixels: conv_first, 15 convs per RRDB and conv_body at the
    (pixel-unshuffled) trunk resolution, then up1 at 2x and up2/hr/last at 4x of it. It is huge;
    the effective radius is far smaller, which is why tiling blends for this architecture."""
    u = UNSHUFFLE[h["scale"]]
    return u * (2 + 15 * h["num_block"]) + u * (1 / 2 + 3 / 4)
