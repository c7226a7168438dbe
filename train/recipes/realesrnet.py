"""Real-ESRNet: a pixel-loss (L1) network trained on Real-ESRGAN's second-order degradations.

Each step cuts HR crops of ``lr_patch × scale`` and degrades them with ``train/realistic.py``
(settings in ``data.degradation``) instead of taking bicubic LR patches; everything else is the
PSNR-oriented pixel recipe (L1, Adam, flips and 90° rotations of the HR crop). The degradation
generator is seeded by the config's ``seed`` and checkpointed, so a resumed run draws the same
degradations it would have drawn.
"""
from __future__ import annotations

import torch

from ..data import PatchSampler
from ..realistic import RealisticDegradation
from .pixel import PixelRecipe


class RealESRNetRecipe(PixelRecipe):
    def __init__(self, cfg, device, sampler=None):
        super().__init__(cfg, device, sampler)
        if len(self.scales) != 1:
            raise ValueError(f"the realesrnet recipe trains one scale, {cfg.arch} {self.hparams} serves {self.scales}")
        self.degradation = RealisticDegradation.from_config(cfg.data.get("degradation"))
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def make_sampler(self) -> PatchSampler:
        """HR images only: the LR comes from the degradation pipeline, no bicubic LR cache."""
        d = self.cfg.data
        on_device = d.get("on_device", self.device.type == "cuda")
        return PatchSampler(d["folders"], [], d.get("lr_patch", 48), d.get("augment", True), None, d.get("limit"),
                            self.cfg.seed, device=self.device if on_device else None)

    def training_pair(self, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.data
        hr = self.sampler.hr_batch(d.get("batch", 16), d.get("lr_patch", 48) * scale).to(self.device)
        lr, _ = self.degradation(hr, scale, self.generator)
        return lr, hr

    def extra_state(self) -> dict:
        return {"degradation_rng": self.generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        if state:
            self.generator.set_state(state["degradation_rng"].cpu())
