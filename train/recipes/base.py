"""What every recipe provides to the training loop in ``train/runner.py``."""
from __future__ import annotations

import copy

import torch
from torch import nn

from srserve.models import SRNet, build_network, get_spec
from srserve.models.repository import LoadedModel

from ..config import TrainConfig
from ..data import PatchSampler


def step_decay(optimizer: torch.optim.Optimizer, optim_cfg: dict) -> torch.optim.lr_scheduler.LRScheduler:
    """Halve (or ×gamma) the learning rate every ``halve_every`` steps or at ``milestones``."""
    gamma = optim_cfg.get("gamma", 0.5)
    if "milestones" in optim_cfg:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, optim_cfg["milestones"], gamma)
    return torch.optim.lr_scheduler.StepLR(optimizer, optim_cfg.get("halve_every", 10**9), gamma)


def adam(params, optim_cfg: dict) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=optim_cfg["lr"], betas=tuple(optim_cfg.get("betas", (0.9, 0.999))),
                            eps=optim_cfg.get("eps", 1e-8), weight_decay=optim_cfg.get("weight_decay", 0.0))


class Recipe:
    """A network, its optimiser(s) and one training step.

    ``modules``/``optimizers``/``schedulers`` are checkpointed by name; ``exported()`` is the
    network that is validated and published (the EMA copy when EMA is on).
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, sampler: PatchSampler | None = None):
        self.cfg = cfg
        self.device = device
        self.spec = get_spec(cfg.arch)
        self.hparams, self.scales = cfg.network()
        if cfg.amp not in (None, "bf16"):
            raise ValueError(f"amp must be bf16 or absent, not {cfg.amp!r}")
        self.net = build_network(cfg.arch, self.hparams).to(device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.ema_net = copy.deepcopy(self.net).eval() if cfg.ema else None
        self.modules: dict[str, nn.Module] = {"net": self.net}
        if self.ema_net is not None:
            self.modules["ema"] = self.ema_net
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.sampler = sampler if sampler is not None else self.make_sampler()

    def make_sampler(self) -> PatchSampler:
        d = self.cfg.data
        on_device = d.get("on_device", self.device.type == "cuda")  # data on the GPU by default
        return PatchSampler(d["folders"], self.scales, d.get("lr_patch", 48), d.get("augment", True),
                            d.get("cache_dir") or self.cfg.run_dir.parent / "cache", d.get("limit"), self.cfg.seed,
                            device=self.device if on_device else None)

    def step(self, iteration: int) -> dict[str, float]:
        raise NotImplementedError

    def autocast(self):
        """The context of forward passes: bfloat16 autocast when ``amp: bf16`` (losses are then
        taken on ``.float()`` outputs), a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the network's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def after_step(self) -> None:
        for sched in self.schedulers.values():
            sched.step()
        if self.ema_net is not None:
            with torch.no_grad():
                decay = self.cfg.ema
                for p_ema, p in zip(self.ema_net.parameters(), self.net.parameters()):
                    p_ema.lerp_(p, 1 - decay)
                for b_ema, b in zip(self.ema_net.buffers(), self.net.buffers()):
                    b_ema.copy_(b)

    def exported(self) -> nn.Module:
        return self.ema_net if self.ema_net is not None else self.net

    def loaded_model(self) -> LoadedModel:
        """The exported network wrapped like a repository model (for validation)."""
        net = self.exported().eval()
        return LoadedModel(name=self.cfg.name, architecture=self.cfg.arch,
                           nets={s: SRNet(self.spec, net, s) for s in self.scales})

    def current_lr(self) -> float:
        opt = next(iter(self.optimizers.values()))
        return opt.param_groups[0]["lr"]
