"""The interface every inference backend implements, and the PyTorch one.

The pipeline and the server only talk to ``Backend``: ``run`` maps a batch of LR tiles to SR
tiles for one scale (RGB, float32, N×3×h×w in [0, 1] -> N×3×sh×sw), and ``degradation``
gives DASR's per-image degradation vector. ONNX Runtime and TensorRT backends live in
``srserve.export.backends`` and are created by ``srserve.export.backends.create_backend``.
"""
from __future__ import annotations

from typing import Protocol

import torch

from srserve.models.repository import LoadedModel


class Backend(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    model: LoadedModel
    device: torch.device
    precision: str  # "fp32", "fp16", "bf16"

    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor: ...

    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None: ...


class TorchBackend:
    """Eager PyTorch on CPU or CUDA (precision and torch.compile options arrive with issue 4)."""

    name = "torch"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.model = model
        self.device = torch.device(device)
        self.precision = precision
        for net in model.nets.values():
            net.to(self.device)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor:
        net = self.model.net(scale)
        x = x.to(self.device, torch.float32)
        if degradation is not None:
            degradation = degradation.to(self.device)
        return net(x, degradation).float()

    @torch.inference_mode()
    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None:
        if not self.model.needs_degradation:
            return None
        return self.model.net(scale).estimate_degradation(x.to(self.device, torch.float32))
