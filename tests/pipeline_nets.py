"""Tiny randomly initialised networks of every architecture, stored in a real repository, and
real LR images for the pipeline tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from conftest import BENCHMARK
from srserve.backends import TorchBackend
from srserve.models.repository import Repository


# name -> [(architecture, hyper-parameters)]; small enough for a 2-core CPU
TINY = {
    "edsr": [("edsr", {"n_resblocks": 2, "n_feats": 8, "scale": 2})],
    "edsr3": [("edsr", {"n_resblocks": 2, "n_feats": 8, "scale": 3})],
    "mdsr": [("mdsr", {"n_resblocks": 2, "n_feats": 8, "scales": [2, 3, 4]})],
    "vdsr": [("vdsr", {"num_layers": 6, "n_feats": 8, "scales": [2, 3, 4]})],
    "dasr": [("dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4, "scale": 2})],
    "rrdb4": [("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4})],
    "rrdb2": [("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 2})],
    "rrdb1": [("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 1})],
    # deep enough (radius 138 > MAX_EXACT_MARGIN) that the defaults blend with the effective margin
    "rrdbdeep": [("rrdbnet", {"num_block": 9, "num_feat": 8, "num_grow_ch": 4, "scale": 4})],
}


def tiny_repository(root: Path, names=None) -> Repository:
    return tiny_models.tiny_repository(root, TINY, names)


def backend_of(repo: Repository, name: str) -> TorchBackend:
    return TorchBackend(repo.load(name))


def scale_of(name: str) -> int:
    _, hparams = TINY[name][0]
    return int(hparams.get("scale", max(hparams.get("scales", [2]))))


def lr_image(relative: str = "Set5/x2/LR/img_003.png", crop: tuple[int, int] | None = None) -> torch.Tensor:
    """A real LR image as 1×3×H×W in [0, 1] (top-left ``crop``), or skip when absent."""
    path = BENCHMARK / relative
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    if crop is not None:
        a = a[: crop[0], : crop[1]]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def to8(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.clamp(0, 1).mul(255).numpy()).astype(np.int16)
