"""PyTorch eager (optionally ``torch.compile``-d) on CPU or CUDA: the reference every other
backend is parity-checked against, and the fallback when nothing faster is installed."""
from __future__ import annotations

import torch

from srserve.models.repository import LoadedModel

from .base import TORCH_DTYPES, PrecisionGuard, resolve_precision


class TorchBackend:
    """Eager (optionally ``torch.compile``-d) PyTorch on CPU or CUDA.

    Reduced precision uses autocast, so the fp32 fallback is the same network without it.
    ``channels_last`` (default on CUDA) lets cuDNN pick its NHWC convolution kernels.
    """

    name = "torch"
    selected = "requested"  # why this backend runs (create_backend's "auto" sets it)

    def __init__(self, model: LoadedModel, device: str | torch.device = "cpu", precision: str = "fp32", *,
                 channels_last: bool | None = None, compile: bool = False, force_precision: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.requested_precision = precision
        self.precision, self.precision_note = resolve_precision(precision, self.device, model.fp16_safe,
                                                                force=force_precision)
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.compiled = bool(compile)
        self._guard = PrecisionGuard(self.precision, f"{model.name}/torch")
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for net in model.nets.values():
            net.to(self.device, memory_format=memory_format)
        self._forward = {s: torch.compile(net) if compile else net for s, net in model.nets.items()}

    @property
    def fp16_fallbacks(self) -> int:
        return self._guard.fallbacks

    @torch.inference_mode()
    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor:
        scale = int(scale)
        net = self._forward[scale] if scale in self._forward else self.model.net(scale)  # raises: wrong scale
        x = x.to(self.device, torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if degradation is not None:
            degradation = degradation.to(self.device, torch.float32)
        out = self._run(net, x, degradation, self.precision)
        return self._guard.check(out, lambda: self._run(net, x, degradation, "fp32"))

    def _run(self, net, x: torch.Tensor, degradation: torch.Tensor | None, precision: str) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=TORCH_DTYPES[precision], enabled=precision != "fp32"):
            return net(x, degradation).float()

    @torch.inference_mode()
    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None:
        if not self.model.needs_degradation:
            return None
        return self.model.net(scale).estimate_degradation(x.to(self.device, torch.float32))

    def describe(self) -> dict:
        return {"backend": self.name, "selected": self.selected, "device": str(self.device),
                "precision": self.precision, "requested_precision": self.requested_precision,
                "precision_note": self.precision_note, "fp16_fallbacks": self.fp16_fallbacks,
                "channels_last": self.channels_last, "compiled": self.compiled}
