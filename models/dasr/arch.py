from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import MeanShift, Upsampler, count_indexed, default_conv, upsampler_radius, upsampler_scale

ENCODER_DIM = 256  # width of the pooled degradation representation


class CALayer(nn.Module):
    """Channel-wise modulation from the degradation vector (two 1x1 convs + sigmoid)."""

    def __init__(self, channels_in: int, channels_out: int, reduction: int):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels_in, channels_in // reduction, 1, 1, 0, bias=False),
            nn.LeakyReLU(0.1, True),
            nn.Conv2d(channels_in // reduction, channels_out, 1, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(deg[:, :, None, None])


class DAConv(nn.Module):
    """Depth-wise kernel predicted from the degradation vector, then 1x1 conv; plus CA branch."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, reduction: int):
        super().__init__()
        self.channels_in = channels_in
        self.kernel_size = kernel_size
        self.kernel = nn.Sequential(
            nn.Linear(channels_in, channels_in, bias=False),
            nn.LeakyReLU(0.1, True),
            nn.Linear(channels_in, channels_in * kernel_size * kernel_size, bias=False),
        )
        self.conv = default_conv(channels_in, channels_out, 1)
        self.ca = CALayer(channels_in, channels_out, reduction)
        self.relu = nn.LeakyReLU(0.1, True)

    def forward(self, x: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        kernel = self.kernel(deg).reshape(b * c, 1, k, k)
        # one grouped conv applies every sample's own depth-wise kernel
        out = F.conv2d(x.reshape(1, b * c, h, w), kernel, groups=b * c, padding=(k - 1) // 2)
        out = self.conv(self.relu(out).reshape(b, c, h, w))
        return out + self.ca(x, deg)


class DAB(nn.Module):
    def __init__(self, n_feats: int, kernel_size: int, reduction: int):
        super().__init__()
        self.da_conv1 = DAConv(n_feats, n_feats, kernel_size, reduction)
        self.da_conv2 = DAConv(n_feats, n_feats, kernel_size, reduction)
        self.conv1 = default_conv(n_feats, n_feats, kernel_size)
        self.conv2 = default_conv(n_feats, n_feats, kernel_size)
        self.relu = nn.LeakyReLU(0.1, True)

    def forward(self, x: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.da_conv1(x, deg))
        out = self.relu(self.conv1(out))
        out = self.relu(self.da_conv2(out, deg))
        return self.conv2(out) + x


class DAG(nn.Module):
    def __init__(self, n_feats: int, kernel_size: int, reduction: int, n_blocks: int):
        super().__init__()
        self.n_blocks = n_blocks
        self.body = nn.Sequential(*[DAB(n_feats, kernel_size, reduction) for _ in range(n_blocks)],
                                  default_conv(n_feats, n_feats, kernel_size))

    def forward(self, x: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
        res = x
        for i in range(self.n_blocks):
            res = self.body[i](res, deg)
        return self.body[-1](res) + x


class DASRNet(nn.Module):
    """The SR network ``G``: input in [0, 255], degradation vector of width 256."""

    def __init__(self, n_groups: int = 5, n_blocks: int = 5, n_feats: int = 64, reduction: int = 8, scale: int = 4,
                 rgb_range: float = 255.0):
        super().__init__()
        self.n_groups = n_groups
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(default_conv(3, n_feats, 3))
        self.compress = nn.Sequential(nn.Linear(ENCODER_DIM, n_feats, bias=False), nn.LeakyReLU(0.1, True))
        self.body = nn.Sequential(*[DAG(n_feats, 3, reduction, n_blocks) for _ in range(n_groups)],
                                  default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, 3, 3))

    def forward(self, x: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        deg = self.compress(degradation)
        x = self.head(self.sub_mean(x))
        res = x
        for i in range(self.n_groups):
            res = self.body[i](res, deg)
        res = self.body[-1](res) + x
        return self.add_mean(self.tail(res))


class Encoder(nn.Module):
    """Degradation encoder: six convs with BN, global average pool -> 256-d ``fea``; an MLP
    head (used only by the contrastive loss) gives the projection."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, True)]

        self.E = nn.Sequential(*block(3, 64), *block(64, 64), *block(64, 128, 2), *block(128, 128),
                               *block(128, 256, 2), *block(256, 256), nn.AdaptiveAvgPool2d(1))
        self.mlp = nn.Sequential(nn.Linear(256, 256), nn.LeakyReLU(0.1, True), nn.Linear(256, 256))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fea = self.E(x).flatten(1)
        return fea, self.mlp(fea)


class QueryEncoder(nn.Module):
    """Holds ``encoder_q`` so parameter names match the official ``E.encoder_q.*`` keys."""

    def __init__(self):
        super().__init__()
        self.encoder_q = Encoder()


class BlindSR(nn.Module):
    """``forward(x, degradation=None)``: x in [0, 255]; the degradation vector is estimated from
    x when not given (the pipeline computes it once per image and passes it to every tile)."""

    def __init__(self, n_groups: int = 5, n_blocks: int = 5, n_feats: int = 64, reduction: int = 8, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.G = DASRNet(n_groups, n_blocks, n_feats, reduction, scale)
        self.E = QueryEncoder()

    def degradation(self, x: torch.Tensor) -> torch.Tensor:
        return self.E.encoder_q(x)[0]

    def forward(self, x: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        if degradation is None:
            degradation = self.degradation(x)
        return self.G(x, degradation)


def convert_dasr(sd: dict) -> dict:
    """Drops the MoCo key encoder and queue, which inference never uses."""
    return {k: v for k, v in sd.items() if not k.startswith(("E.encoder_k.", "E.queue"))}


def detect_dasr(sd: dict) -> dict | None:
    if "G.head.0.weight" not in sd or "E.encoder_q.E.0.weight" not in sd:
        return None
    n_feats = sd["G.head.0.weight"].shape[0]
    return {
        "n_groups": count_indexed(sd, "G.body.{}.body.0.da_conv1.kernel.0.weight"),
        "n_blocks": count_indexed(sd, "G.body.0.body.{}.da_conv1.kernel.0.weight"),
        "n_feats": n_feats,
        "reduction": n_feats // sd["G.body.0.body.0.da_conv1.ca.conv_du.0.weight"].shape[0],
        "scale": upsampler_scale(sd, "G.tail.0.", n_feats),
    }


def dasr_receptive_radius(h: dict) -> float:
    # head + per block (dw 3x3, conv, dw 3x3, conv) + group convs + body conv + upsampler + tail
    return 1 + h["n_groups"] * (4 * h["n_blocks"] + 1) + 1 + upsampler_radius(h["scale"]) + 1 / h["scale"]
