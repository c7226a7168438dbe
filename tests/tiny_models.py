"""The one tiny-model factory: randomly initialised networks of any architecture, seeded, stored
in a real repository. ``pipeline_nets.TINY`` and ``export_nets.TINY`` are the tables the test
modules use (name -> [(architecture, hyper-parameters), ...], one entry per weights file)."""
from __future__ import annotations

from pathlib import Path

import torch

from srserve.models.registry import build_network
from srserve.models.repository import Repository


def make_net(arch: str, hparams: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network(arch, hparams)
    if hasattr(net, "conv_last") and getattr(net.conv_last, "bias", None) is not None and arch == "rrdbnet":
        # RRDBNet has no mean shift: centre a random net's output in [0, 1] so little is clamped
        with torch.no_grad():
            net.conv_last.bias.fill_(0.5)
            net.conv_last.weight.mul_(4)
    return net


def tiny_repository(root: Path, table: dict, names=None, seed: int = 0) -> Repository:
    """A repository holding ``names`` (default: all) of ``table``, seed ``seed + 10·i + j``."""
    repo = Repository(root)
    for i, name in enumerate(names or table):
        for j, (arch, hparams) in enumerate(table[name]):
            repo.add_weights(name, arch, hparams, make_net(arch, hparams, seed + 10 * i + j).state_dict())
    return repo
