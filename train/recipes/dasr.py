"""DASR: contrastive (MoCo) pre-training of the degradation encoder, then joint training.

Each step degrades ``batch`` HR crops with per-image random kernels (and noise), takes two LR
patches of every degraded image: the query and key encoders see one each (positives share a
degradation, other images' keys in the queue are negatives; InfoNCE with τ = 0.07). Stage 1
(``extra.encoder_iterations`` steps) trains the encoder alone; then the SR network joins with
L1 + the contrastive loss.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..degradation import degrade, random_kernels
from .base import Recipe, adam, step_decay


class MoCoQueue:
    """Momentum key encoder bookkeeping: a FIFO queue of normalised keys (dim × K)."""

    def __init__(self, dim: int, size: int, generator: torch.Generator):
        self.keys = F.normalize(torch.randn(dim, size, generator=generator), dim=0)
        self.ptr = 0

    def enqueue(self, keys: torch.Tensor) -> None:
        """Replaces the oldest entries with ``keys`` (B×dim), wrapping around the end."""
        keys = keys.detach().to(self.keys)
        idx = (self.ptr + torch.arange(keys.shape[0])) % self.keys.shape[1]
        self.keys[:, idx] = keys.T
        self.ptr = int((self.ptr + keys.shape[0]) % self.keys.shape[1])


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class DASRRecipe(Recipe):
    def __init__(self, cfg, device, sampler=None):
        super().__init__(cfg, device, sampler)
        extra = cfg.extra
        self.scale = self.scales[0]
        self.encoder_q = self.net.E.encoder_q
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.modules["encoder_k"] = self.encoder_k
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.queue = MoCoQueue(256, extra.get("queue_size", 8192), self.generator)
        self.temperature = extra.get("temperature", 0.07)
        self.momentum = extra.get("moco_momentum", 0.999)
        self.encoder_iterations = extra.get("encoder_iterations", 0)
        self.optimizers["encoder"] = adam(self.encoder_q.parameters(), {**cfg.optim, **extra.get("encoder_optim", {})})
        self.optimizers["net"] = adam(self.net.G.parameters(), cfg.optim)
        self.schedulers["net"] = step_decay(self.optimizers["net"], cfg.optim)

    def after_warm_start(self) -> None:
        """The key encoder restarts as a copy of the (published) query encoder, as at MoCo's start."""
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())

    def extra_state(self) -> dict:
        return {"queue": self.queue.keys, "queue_ptr": self.queue.ptr}

    def load_extra_state(self, state: dict) -> None:
        if state:
            self.queue.keys, self.queue.ptr = state["queue"], int(state["queue_ptr"])

    def degraded_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two (LR, HR) patches per image, both patches of an image degraded identically."""
        d = self.cfg.data
        lr_patch = d.get("lr_patch", 48)
        n = d.get("batch", 32)
        hr = self.sampler.hr_batch(n, lr_patch * self.scale, per_image=2).to(self.device)  # 2n crops
        kernels = random_kernels(n, tuple(d.get("sigma", (0.2, 4.0))), d.get("anisotropic", False), self.generator)
        noise = torch.rand(n, generator=self.generator) * d.get("noise", 0.0)
        lr = degrade(hr, self.scale, kernels.repeat_interleave(2, 0), noise.repeat_interleave(2, 0), self.generator)
        return lr[0::2], lr[1::2], hr[0::2], hr[1::2]

    def contrastive(self, lr_q: torch.Tensor, lr_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            fea, q = self.encoder_q(self.layout(lr_q * 255))
        q = q.float()
        with torch.no_grad():
            for p_k, p_q in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
                p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1 - self.momentum)
            with self.autocast():
                _, k = self.encoder_k(self.layout(lr_k * 255))
            k = k.float()
        loss = info_nce(q, k, self.queue.keys.clone().to(q), self.temperature)  # enqueue below mutates it
        self.queue.enqueue(F.normalize(k, dim=1))
        return loss, fea

    def step(self, iteration: int) -> dict[str, float]:
        lr_q, lr_k, hr_q, _ = self.degraded_pairs()
        self.net.train()
        self.encoder_k.train()
        loss_c, fea = self.contrastive(lr_q, lr_k)
        if iteration < self.encoder_iterations:
            self.optimizers["encoder"].zero_grad(set_to_none=True)
            loss_c.backward()
            self.optimizers["encoder"].step()
            return {"contrastive": loss_c.item()}
        with self.autocast():
            sr = self.net.G(self.layout(lr_q * 255), fea)
        sr = sr.float() / 255
        l1 = F.l1_loss(sr, hr_q)
        loss = l1 + loss_c
        for opt in (self.optimizers["encoder"], self.optimizers["net"]):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in (self.optimizers["encoder"], self.optimizers["net"]):
            opt.step()
        self.after_step()
        return {"l1": l1.item() * 255, "contrastive": loss_c.item()}
