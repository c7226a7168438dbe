"""Native TensorRT backend: one cached engine per scale, built from the fp32 ONNX graph.

Reduced precision is a builder flag (FP16/BF16, TF32 for the fp32 layers). Each engine is
parity-checked against PyTorch right after it is built (the same criterion as the ONNX
export), and only then stored in the engine cache. DASR's encoder runs in PyTorch: once per
image, on whole images whose size no tile profile bounds. A batch outside the engine's profile
(an image smaller than the profile's minimum side) and any batch whose reduced-precision output
has NaN/Inf run in PyTorch fp32 on the same GPU, counted in ``describe()``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from srserve.models.repository import LoadedModel

from .artifacts import default_cache_dir
from .base import BackendError, PrecisionGuard, resolve_precision
from .cuda import DEFAULT_MAX_BATCH
from .sources import ArtifactBuilder, OnnxArtifacts
from .torch_backend import TorchBackend

log = logging.getLogger("srserve.backends")


class TensorRTBackend:
    name = "tensorrt"
    selected = "requested"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cuda", precision: str = "fp32", *,
                 cache_dir: str | Path | None = None, builder: ArtifactBuilder | None = None, tile: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, tf32: bool = True, force_precision: bool = False):
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA GPU")
        self.model = model
        self.requested_precision = precision
        self.precision, self.precision_note = resolve_precision(precision, self.device, model.fp16_safe,
                                                                force=force_precision)
        if builder is None:
            raise BackendError("TensorRT engines are built on first use by srserve.export; pass its ExportBuilder")
        cache_root = Path(cache_dir or default_cache_dir())
        self.artifacts = OnnxArtifacts(model, cache_root, builder=builder)
        self.torch = TorchBackend(model, self.device)  # fp32 fallback and DASR's encoder
        self._guard = PrecisionGuard(self.precision, f"{model.name}/tensorrt")
        self.out_of_profile = 0
        self.runners, self.profiles, self.engines = {}, {}, {}
        for scale in model.scales:
            path, artifact = self.artifacts.get("sr", scale, "fp32")
            runner, profile, info = builder.tensorrt_engine(model, scale, self.precision, onnx_path=path,
                                                            onnx_sha256=artifact.sha256, inputs=artifact.inputs,
                                                            cache_root=cache_root, device=self.device, tile=tile,
                                                            max_batch=max_batch, tf32=tf32)
            self.runners[scale], self.profiles[scale], self.engines[scale] = runner, profile, info

    @property
    def fp16_fallbacks(self) -> int:
        return self._guard.fallbacks

    @torch.inference_mode()
    def run(self, x: torch.Tensor, scale: int, degradation: torch.Tensor | None = None) -> torch.Tensor:
        scale = int(scale)
        if scale not in self.runners:
            self.model.net(scale)  # raises the user-facing scale error
        x = x.to(self.device, torch.float32)
        feeds = {"image": x}
        if degradation is not None:
            feeds["degradation"] = degradation.to(self.device, torch.float32)
        if not all(self.profiles[scale].accepts(n, tuple(t.shape)) for n, t in feeds.items()):
            self.out_of_profile += 1
            return self.torch.run(x, scale, degradation)
        out = self.runners[scale](feeds)[0]
        return self._guard.check(out, lambda: self.torch.run(x, scale, degradation))

    def degradation(self, x: torch.Tensor, scale: int) -> torch.Tensor | None:
        return self.torch.degradation(x, scale)

    def describe(self) -> dict:
        return {"backend": self.name, "selected": self.selected, "device": str(self.device),
                "precision": self.precision,
                "requested_precision": self.requested_precision, "precision_note": self.precision_note,
                "fp16_fallbacks": self.fp16_fallbacks, "out_of_profile_batches": self.out_of_profile,
                "engines": {str(s): info for s, info in self.engines.items()}}
