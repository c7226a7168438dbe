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

from srserve.backend import BackendError, PrecisionGuard, TorchBackend, resolve_precision
from srserve.models.repository import LoadedModel

from ..artifacts import default_cache_dir
from ..onnx_export import GraphJob, check_parity_with
from ..tensorrt import (DEFAULT_MAX_BATCH, EngineCache, EngineRecord, EngineProfile, TensorRTRunner, build_engine,
                        current_environment, deserialize_engine, engine_cache_key, profile_for_window, tile_window)
from .sources import OnnxArtifacts

log = logging.getLogger("srserve.export")


def engine_label(model: LoadedModel, scale: int, precision: str) -> str:
    return f"{model.name}-x{scale}-{precision}"


def load_engine(model: LoadedModel, scale: int, precision: str, *, onnx_path: Path, onnx_sha256: str,
                inputs: list[dict], cache: EngineCache, device: torch.device, tile: int | None = None,
                max_batch: int = DEFAULT_MAX_BATCH, tf32: bool = True) -> tuple[TensorRTRunner, EngineProfile, dict]:
    """The cached engine for this graph/precision/profile on this GPU, built (and checked) if needed."""
    env = current_environment(device)
    profile = profile_for_window(inputs, window=tile_window(model, scale, tile), max_batch=max_batch)
    key = engine_cache_key(env, onnx_sha256, precision, profile, tf32=tf32)
    record = EngineRecord(key=key, label=engine_label(model, scale, precision), onnx_sha256=onnx_sha256,
                          precision=precision, tf32=tf32, profile=profile.to_json(),
                          environment={"gpu": env.gpu_name, "cc": list(env.compute_capability),
                                       "tensorrt": env.tensorrt_version})

    def load(plan: bytes):
        return deserialize_engine(plan, device)

    def build():
        log.warning("building TensorRT engine %s (%s); this takes minutes once, then it is cached in %s",
                    record.label, key[:12], cache.root)
        plan = build_engine(onnx_path, precision, profile, tf32=tf32,
                            timing_cache=cache.timing_cache_path(env, tf32=tf32), device=device)
        loaded = load(plan)
        if loaded is None:
            raise BackendError(f"TensorRT built {record.label} but cannot load it")
        runner = TensorRTRunner(loaded, device)
        parity = check_parity_with(model, GraphJob("sr", scale, "fp32" if precision == "fp32" else "fp16"),
                                   lambda feeds: runner(feeds)[0].float().cpu(), profile_side(profile),
                                   batch=min(3, max_batch))
        if not parity["passed"]:
            raise BackendError(f"TensorRT engine {record.label} failed its parity check: {parity}")
        return plan, parity

    loaded, built = cache.get_or_build(record.label, record, build, load)
    info = {"engine": str(cache.plan_path(record.label, key)), "built_now": built, "key": key,
            "profile": profile.to_json()}
    return TensorRTRunner(loaded, device), profile, info


def profile_side(profile: EngineProfile) -> int:
    """The largest square side of the image input's profile (used for the parity inputs)."""
    for name, r in profile.shapes:
        if name == "image":
            return min(r.max[2], r.max[3])
    raise BackendError("profile has no image input")


class TensorRTBackend:
    name = "tensorrt"
    selected = "requested"

    def __init__(self, model: LoadedModel, device: str | torch.device = "cuda", precision: str = "fp32", *,
                 cache_dir: str | Path | None = None, export_missing: bool = True, tile: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, tf32: bool = True, force_precision: bool = False):
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA GPU")
        self.model = model
        self.requested_precision = precision
        self.precision, self.precision_note = resolve_precision(precision, self.device, model.fp16_safe,
                                                                force=force_precision)
        cache_root = Path(cache_dir or default_cache_dir())
        self.cache = EngineCache(cache_root / "tensorrt")
        self.artifacts = OnnxArtifacts(model, cache_root, export_missing=export_missing)
        self.torch = TorchBackend(model, self.device)  # fp32 fallback and DASR's encoder
        self._guard = PrecisionGuard(self.precision, f"{model.name}/tensorrt")
        self.out_of_profile = 0
        self.runners, self.profiles, self.engines = {}, {}, {}
        for scale in model.scales:
            path, artifact = self.artifacts.get("sr", scale, "fp32")
            runner, profile, info = load_engine(model, scale, self.precision, onnx_path=path,
                                                onnx_sha256=artifact.sha256, inputs=artifact.inputs, cache=self.cache,
                                                device=self.device, tile=tile, max_batch=max_batch, tf32=tf32)
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
