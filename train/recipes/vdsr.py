"""VDSR: residual learning on the bicubic-upscaled Y channel, scales mixed within a batch, SGD
with momentum and weight decay, and adjustable gradient clipping to [-θ/γ, θ/γ]."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srserve.models.color import rgb_to_ycbcr
from srserve.models.resize import BicubicUpsample

from .base import Recipe, adam, step_decay

BICUBIC_MARGIN = 2  # LR context pixels the bicubic taps need, so patches have no border artefacts


def clip_gradients_adjustable(parameters, theta: float, lr: float) -> float:
    """Clips every gradient element to [-θ/γ, θ/γ], γ the current learning rate (VDSR §3.3):
    with a large γ the bound is tight, and it relaxes as γ decays."""
    bound = theta / lr
    torch.nn.utils.clip_grad_value_(parameters, bound)
    return bound


def he_initialise(net: nn.Module) -> None:
    """N(0, 2/n) weights, n = k·k·out_channels (VDSR §4.1, after He et al.), and a zero output
    layer so training starts from the bicubic input exactly. PyTorch's default init shrinks the
    signal at every layer (a 20-layer VDSR then has vanishing gradients and stays at bicubic); He
    init alone starts with a residual of noise so large that lr 0.1 kills the ReLUs."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(net.output.weight)


class VDSRRecipe(Recipe):
    def __init__(self, cfg, device, sampler=None):
        super().__init__(cfg, device, sampler)
        he_initialise(self.net)
        o = cfg.optim
        if o.get("type", "sgd") == "adam":  # a deviation from the paper, for short (time-boxed) runs
            self.optimizers["net"] = adam(self.net.parameters(), o)
        else:
            self.optimizers["net"] = torch.optim.SGD(self.net.parameters(), lr=o["lr"], momentum=o.get("momentum", 0.9),
                                                     weight_decay=o.get("weight_decay", 1e-4))
        self.schedulers["net"] = step_decay(self.optimizers["net"], {"gamma": 0.1, **o})
        self.upsamplers = {s: BicubicUpsample(s).to(device) for s in self.scales}
        self.hr_patch = cfg.data.get("hr_patch", 48)  # divisible by 2, 3 and 4 (the paper uses 41)

    def luma_batch(self, scale: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.sampler.batch(count, scale, self.hr_patch // scale, BICUBIC_MARGIN)
        ilr = self.upsamplers[scale](rgb_to_ycbcr(lr.to(self.device))[:, :1])
        m = BICUBIC_MARGIN * scale
        return ilr[..., m:-m, m:-m], rgb_to_ycbcr(hr.to(self.device))[:, :1]

    def step(self, iteration: int) -> dict[str, float]:
        batch = self.cfg.data.get("batch", 64)
        counts = torch.bincount(torch.from_numpy(self.sampler.rng.integers(len(self.scales), size=batch)),
                                minlength=len(self.scales))
        pairs = [self.luma_batch(s, int(n)) for s, n in zip(self.scales, counts) if n > 0]
        ilr = torch.cat([p[0] for p in pairs])
        hr = torch.cat([p[1] for p in pairs])
        self.net.train()
        with self.autocast():
            residual_added = self.net(self.layout(ilr))
        loss = F.mse_loss(residual_added.float(), hr)
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients_adjustable(self.net.parameters(), self.cfg.optim.get("clip_theta", 0.4), self.current_lr())
        opt.step()
        self.after_step()
        return {"mse": loss.item(), "psnr_patch": float(-10 * torch.log10(torch.tensor(loss.item())))}
