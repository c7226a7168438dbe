"""Recipes trained with a pixel loss on RGB patches: EDSR, MDSR and PSNR-oriented RRDBNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from srserve.models import SRNet

from .base import Recipe, adam, step_decay


class PixelRecipe(Recipe):
    """L1 on RGB, Adam, aligned LR/HR patches with flips and 90° rotations (EDSR paper; ESRGAN's
    PSNR-oriented stage). Multi-scale networks (MDSR) draw ONE scale per minibatch, so only that
    scale's head and upsampler take part in the graph; parameters without a gradient are skipped
    by the optimiser (gradients are reset to None, not zero), so they are not updated either."""

    def __init__(self, cfg, device, sampler=None):
        super().__init__(cfg, device, sampler)
        self.optimizers["net"] = adam([p for p in self.net.parameters() if p.requires_grad], cfg.optim)
        self.schedulers["net"] = step_decay(self.optimizers["net"], cfg.optim)
        self.wrappers = {s: SRNet(self.spec, self.net, s) for s in self.scales}

    def pick_scale(self) -> int:
        return self.scales[int(self.sampler.rng.integers(len(self.scales)))]

    def training_pair(self, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR, HR) batch of aligned patches: MATLAB-bicubic LR here, other degradations in subclasses."""
        return self.sampler.batch(self.cfg.data.get("batch", 16), scale)

    def step(self, iteration: int) -> dict[str, float]:
        scale = self.pick_scale()
        lr, hr = self.training_pair(scale)
        lr, hr = self.layout(lr.to(self.device)), hr.to(self.device)
        self.net.train()
        with self.autocast():
            sr = self.wrappers[scale](lr)
        loss = F.l1_loss(sr.float(), hr)
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.after_step()
        # report on the 0-255 scale, as the papers do
        return {"l1": loss.item() * 255, "scale": scale}
