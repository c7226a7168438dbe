"""Models as the server runs them, and one request's way from decoded pixels to an encoded image.

``ServedModel``: a backend plus its tiling per scale (``pipeline.tiling.default_tiling``, the
tile core side overridable by ``tile_size``) and how its tiles run in a batch. ``Engine``: loads
and warms the models, owns the scheduler (``batching``) and the I/O thread pool, and upscales a
``Raster`` the way ``pipeline.image.upscale_raster`` does (gray as R = G = B then luma, alpha
through the model unless fully opaque, any output size by a native scale then LANCZOS), with the
tiles of every request batched together.

MDSR across scales: with the torch backend, the tiles of all three scales share one queue; a
batch that mixes scales runs each scale's head on its tiles, the shared body (≈ 90% of the
FLOPs: 16 or 80 residual blocks at LR size) once on all of them, and each scale's tail. That
keeps batches full when traffic is spread over scales, at no cost when it is not (a batch of
one scale is the backend's ordinary call). ONNX Runtime and TensorRT run one whole graph per
scale, so there the scales keep separate queues. On CPU (one tile per batch by default) it
changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from srserve.backend import TorchBackend
from srserve.models.repository import BICUBIC, Repository
from srserve.pipeline.degradation import image_degradation
from srserve.pipeline.ensemble import transforms_for
from srserve.pipeline.image import OutputSize, _luma, _quantise, _to_tensor, resize_exact, resolve_output_size
from srserve.pipeline.imageio import MEDIA_TYPES, Raster, encode_image, output_format, read_image
from srserve.pipeline.tiling import TilePlan, TilingConfig, default_tiling, plan_tiles

from .batching import ImageWork, Scheduler, Ticket
from .config import ConfigError, Settings
from .errors import InvalidParameter, Unavailable
from .metrics import Metrics

log = logging.getLogger("srserve.service")

PREFERRED_DEFAULT = "edsr"


class ServedModel:
    """One loaded model: backend, per-scale tiling, and how a batch of its tiles runs."""

    def __init__(self, backend, tile_size: int | None, cross_scale: bool):
        self.backend = backend
        self.loaded = backend.model
        self.name = self.loaded.name
        self.architecture = self.loaded.architecture
        self.backend_name = backend.name
        self.precision = backend.precision
        self.scales = list(self.loaded.scales)
        self.tiling: dict[int, TilingConfig] = {s: default_tiling(backend, s) for s in self.scales}
        self.tile_size = {s: int(tile_size or cfg.tile_size) for s, cfg in self.tiling.items()}
        self.cross_scale = (cross_scale and self.architecture == "mdsr" and backend.name == "torch"
                            and self.precision == "fp32" and len(self.scales) > 1)

    @property
    def needs_degradation(self) -> bool:
        return bool(self.loaded.needs_degradation)

    def plan(self, height: int, width: int, scale: int) -> TilePlan:
        cfg = self.tiling[scale]
        return plan_tiles(height, width, scale, self.tile_size[scale], cfg.margin, feather=cfg.feather,
                          align=cfg.align)

    def queue_scale(self, scale: int) -> int | None:
        return None if self.cross_scale else scale

    def run_tiles(self, windows: torch.Tensor, scales: list[int], degradation: torch.Tensor | None
                  ) -> list[torch.Tensor]:
        """N windows -> N outputs on the CPU (float32, not clamped); runs on the inference thread."""
        if len(set(scales)) == 1:
            return list(self.backend.run(windows, scales[0], degradation).float().cpu())
        return self._run_mixed_scales(windows, scales)

    @torch.inference_mode()
    def _run_mixed_scales(self, windows: torch.Tensor, scales: list[int]) -> list[torch.Tensor]:
        """MDSR: per-scale heads, one body for all tiles, per-scale tails (see the module doc)."""
        srnet = self.loaded.net(scales[0])
        mdsr, value_range = srnet.net, srnet.value_range
        device = self.backend.device
        x = windows.to(device, torch.float32) * value_range
        if getattr(self.backend, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(scales):
            groups.setdefault(s, []).append(i)
        heads = torch.cat([mdsr.head_forward(x[idx], s) for s, idx in groups.items()])
        body = mdsr.body_forward(heads)
        outputs: list[torch.Tensor | None] = [None] * len(scales)
        start = 0
        for s, idx in groups.items():
            tail = (mdsr.tail_forward(body[start:start + len(idx)], s) / value_range).float().cpu()
            for i, out in zip(idx, tail):
                outputs[i] = out
            start += len(idx)
        return outputs

    def warmup_inputs(self, scale: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of full-size windows (the shape most tiles have) for warm-up."""
        side = self.tile_size[scale] + 2 * self.tiling[scale].margin
        side = math.ceil(side / self.tiling[scale].align) * self.tiling[scale].align
        x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
        return x, None

    def describe(self) -> dict:
        info = self.backend.describe() if hasattr(self.backend, "describe") else {"backend": self.backend_name}
        return {
            "name": self.name, "architecture": self.architecture, "scales": self.scales,
            "description": self.loaded.entry.description if self.loaded.entry is not None else
            "MATLAB-exact bicubic interpolation (baseline)",
            "backend": info.get("backend", self.backend_name), "backend_selected": info.get("selected"),
            "device": str(self.backend.device), "precision": self.precision,
            "needs_degradation": self.needs_degradation, "mdsr_cross_scale_batching": self.cross_scale,
            "tiling": {str(s): {"tile_size": self.tile_size[s], "margin": cfg.margin, "feather": cfg.feather,
                                "align": cfg.align, "mode": cfg.mode,
                                "receptive_radius": round(cfg.receptive_radius, 2)}
                       for s, cfg in self.tiling.items()},
        }


@dataclass
class Decoded:
    raster: Raster
    color: torch.Tensor  # 1×3×H×W in [0, 1]
    alpha: torch.Tensor | None  # 1×3×H×W (R = G = B = alpha), None when absent or fully opaque


@dataclass
class Upscaled:
    data: bytes
    media_type: str
    width: int
    height: int
    inference_ms: float


def create_model_backend(name: str, settings: Settings, repository: Repository):
    """The backend of one model (``bicubic`` always runs on torch: nothing to export)."""
    device = settings.torch_device
    loaded = repository.load(name, "cpu")
    if name == BICUBIC or settings.backend == "torch":
        return TorchBackend(loaded, device, settings.precision)
    try:
        from srserve.export.backends import create_backend
    except ImportError:
        if settings.backend != "auto":
            raise ConfigError(f"backend {settings.backend!r} needs the export extra (pip install 'srserve[export]')")
        return TorchBackend(loaded, device, settings.precision)
    return create_backend(loaded, settings.backend, device=device, precision=settings.precision,
                          threads=settings.threads, cache_dir=settings.engine_cache, tile=settings.tile_size,
                          max_batch=settings.batch_tiles)


def model_names(settings: Settings, repository: Repository) -> list[str]:
    """The models to serve: as configured, else the whole repository plus ``bicubic``."""
    if settings.models:
        return list(dict.fromkeys(settings.models))
    return [*repository.names(), BICUBIC]


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.device = settings.torch_device
        self.repository = Repository(settings.repository)
        self.models: dict[str, ServedModel] = {}
        self.scheduler = Scheduler(self.device, settings.batch_tiles, settings.max_delay_ms / 1000, metrics)
        self.io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="sr-io")
        self.default_model: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Fails fast (ConfigError) on what can be checked without loading anything."""
        names = model_names(self.settings, self.repository)
        if not self.repository.root.is_dir():
            log.warning("model repository %s does not exist; serving %s", self.repository.root, ", ".join(names))
        for name in names:
            if name != BICUBIC:
                self.repository.get(name)  # raises a one-line RepositoryError
        if self.settings.default_model and self.settings.default_model not in names:
            raise ConfigError(f"default_model {self.settings.default_model!r} is not among the served models "
                              f"{names}")
        return names

    def load(self) -> None:
        """Loads every model (blocking; run it off the event loop)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        for name in self.check():
            started = time.monotonic()
            backend = create_model_backend(name, self.settings, self.repository)
            self.models[name] = ServedModel(backend, self.settings.tile_size, self.settings.mdsr_cross_scale)
            log.info("loaded %s (%s, scales %s) on %s in %.1fs", name, backend.name, self.models[name].scales,
                     self.device, time.monotonic() - started)
        self.default_model = self.settings.default_model or (
            PREFERRED_DEFAULT if PREFERRED_DEFAULT in self.models else next(iter(self.models)))
        self.metrics.set_build_info(_version(), str(self.device), [m.backend_name for m in self.models.values()])

    async def warmup(self) -> None:
        """Runs a full batch of every model/scale on the inference thread (kernels, allocator,
        TensorRT engines), so the first requests are not slow."""
        for model in self.models.values():
            for scale in model.scales:
                started = time.monotonic()
                x, _ = model.warmup_inputs(scale, self.settings.batch_tiles)
                degradation = None
                if model.needs_degradation:
                    degradation = await self.scheduler.call_async(
                        lambda m=model, s=scale, w=x[:1]: image_degradation(m.backend, w, s))
                    degradation = degradation.expand(len(x), -1)
                await self.scheduler.call_async(
                    lambda m=model, s=scale, w=x, d=degradation: m.run_tiles(w, [s] * len(w), d))
                log.info("warmed up %s x%d in %.2fs", model.name, scale, time.monotonic() - started)
            if model.cross_scale and self.settings.batch_tiles > 1:
                x, _ = model.warmup_inputs(model.scales[0], len(model.scales))
                await self.scheduler.call_async(lambda m=model, w=x: m.run_tiles(w, list(m.scales), None))

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.io.shutdown(wait=False, cancel_futures=True)

    # --- requests -----------------------------------------------------------------------------
    async def in_io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def decode(self, body: bytes) -> Decoded:
        return await self.in_io(decode_image, body, self.settings.max_pixels)

    def output_size(self, model: ServedModel, decoded: Decoded, scale: int | None, outscale: float | None
                    ) -> OutputSize:
        if scale is not None and scale not in model.scales:
            raise InvalidParameter(f"model {model.name!r} serves scales {model.scales}, not x{scale}")
        raster = decoded.raster
        return resolve_output_size(raster.height, raster.width, model.scales, scale=scale, outscale=outscale)

    def tiles_needed(self, model: ServedModel, decoded: Decoded, scale: int, self_ensemble: bool) -> int:
        h, w = decoded.raster.height, decoded.raster.width
        images = 1 + (decoded.alpha is not None)
        return len(model.plan(h, w, scale)) * len(transforms_for(self_ensemble)) * images

    def admit(self, tiles: int) -> None:
        """503 when the queues are full; a single large request is let into empty queues."""
        queued = self.scheduler.queued_tiles
        if queued and queued + tiles > self.settings.max_queued_tiles:
            raise Unavailable("overloaded", f"{queued} tiles are queued; this request needs {tiles} more "
                              f"(limit {self.settings.max_queued_tiles}); retry later", retry_after=2)

    async def upscale(self, ticket: Ticket, model: ServedModel, decoded: Decoded, size: OutputSize,
                      self_ensemble: bool, fmt: str, quality: int | None) -> Upscaled:
        images = [decoded.color] + ([decoded.alpha] if decoded.alpha is not None else [])
        try:
            results = await asyncio.gather(*(self._upscale_image(ticket, model, x, size.scale, self_ensemble)
                                             for x in images))
        except BaseException:
            self.scheduler.cancel(ticket)
            raise
        data = await self.in_io(compose_and_encode, decoded, results, size, fmt, quality)
        return Upscaled(data, MEDIA_TYPES[output_format(fmt)], size.width, size.height, ticket.inference_s * 1000)

    async def _upscale_image(self, ticket: Ticket, model: ServedModel, x: torch.Tensor, scale: int,
                             self_ensemble: bool) -> torch.Tensor:
        degradation = None
        if model.needs_degradation:  # once per image, from the whole image (pipeline.degradation)
            started = time.monotonic()
            degradation = await self.scheduler.call_async(lambda: image_degradation(model.backend, x, scale))
            degradation = degradation.float().cpu()
            ticket.inference_s += time.monotonic() - started
        plan = model.plan(x.shape[-2], x.shape[-1], scale)
        work = ImageWork(ticket, model, x, plan, degradation, transforms_for(self_ensemble),
                         asyncio.get_running_loop())
        self.scheduler.submit(work)
        return await work.future


def decode_image(body: bytes, max_pixels: int) -> Decoded:
    """Bytes -> raster and model inputs (I/O thread); the pixel limit is checked from the header."""
    raster = read_image(body, max_pixels)
    color = _to_tensor(raster.color, raster.max_value)
    alpha = None
    if raster.has_alpha and raster.alpha.min() != raster.max_value:  # a fully opaque alpha needs no model
        alpha = _to_tensor(raster.alpha, raster.max_value)
    return Decoded(raster, color, alpha)


def compose_and_encode(decoded: Decoded, results: list[torch.Tensor], size: OutputSize, fmt: str,
                       quality: int | None) -> bytes:
    """Model outputs -> the output raster (as ``upscale_raster`` makes it) -> encoded bytes."""
    raster = decoded.raster
    color = _luma(results[0]) if raster.gray else results[0]
    parts = [resize_exact(color, size.height, size.width)]
    if raster.has_alpha:
        alpha = results[1].mean(1, keepdim=True) if decoded.alpha is not None else \
            torch.ones(1, 1, raster.height * size.scale, raster.width * size.scale)
        parts.append(resize_exact(alpha, size.height, size.width))
    out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    pixels = _quantise(out, raster.max_value, raster.pixels.dtype)
    return encode_image(Raster(pixels, raster.icc_profile, raster.source_format), fmt, quality)


def _version() -> str:
    from srserve import __version__

    return __version__

