"""Models as the server runs them, and ``Engine.upscale``: one request from bytes to bytes.

``ServedModel``: a backend, its tiling per scale and how a batch of its tiles runs. ``Engine``
loads and warms the models, owns the scheduler (``batching``) and the I/O thread pool, and turns
a request into a ``pipeline.job.ImageJob`` — the same job the CLI runs — whose work items the
scheduler batches with those of other requests.

Tiling: where batches form (a GPU with ``max_batch_tiles`` > 1) every image is cut into windows
of one shape (``tile_size``) so that tiles of different requests stack; where they cannot (a
CPU, one tile per batch) a request is planned like ``srserve upscale`` plans it — the whole
image when it fits in memory, otherwise the fewest tiles — since uniform windows would only add
computed pixels. An explicit ``SR_TILE_SIZE`` always wins.

Cross-scale batches: when the architecture's spec splits the network into per-scale head,
shared body and per-scale tail (``ArchSpec.shared_body``, MDSR) and the backend is torch fp32,
the tiles of all its scales share one queue; a batch mixing scales runs each scale's head on its
tiles, the body once on all of them and each scale's tail. Graph backends run one graph per
scale, so there the scales keep separate queues.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from srserve.backends import create_backend
from srserve.export import ExportBuilder
from srserve.models.repository import BICUBIC, Repository, sha256_file
from srserve.pipeline import ImageJob, TilingRequest, create_job, set_degradation
from srserve.pipeline.image import OutputSize, resolve_output_size
from srserve.pipeline.imageio import DEFAULT_QUALITY, MEDIA_TYPES, encode_image, output_format, probe, read_image
from srserve.pipeline.memory import auto_tile_size, release_free_memory
from srserve.pipeline.tiling import TilingConfig, default_tiling

from .batching import INTERACTIVE, ImageWork, Scheduler, Ticket
from .config import PREFERRED_DEFAULT_MODEL, ConfigError, Settings
from .errors import InvalidParameter, TooLarge, Unavailable
from .metrics import Metrics

log = logging.getLogger("srserve.service")

WARMUP_SIDE = 32  # LR side of the warm-up windows of shape-agnostic engines


class ServedModel:
    """One loaded model: backend, per-scale tiling, and how a batch of its tiles runs."""

    def __init__(self, backend, tile_size: int | None, cross_scale: bool, uniform_windows: bool = True,
                 batch: int = 1):
        self.backend = backend
        self.loaded = backend.model
        self.name = self.loaded.name
        self.architecture = self.loaded.architecture
        self.backend_name = backend.name
        self.precision = backend.precision
        self.scales = list(self.loaded.scales)
        self.tiling: dict[int, TilingConfig] = {s: default_tiling(backend, s) for s in self.scales}
        self.tile_size = {s: int(tile_size or self._fitting_tile(s, batch)) for s in self.scales}
        self.uniform_windows = bool(tile_size) or uniform_windows
        self.shared_body = self._shared_body() if cross_scale else None
        self.cross_scale = self.shared_body is not None
        self.weights_sha256 = weights_identity(self.loaded)

    def _fitting_tile(self, scale: int, batch: int) -> int:
        """The architecture's default tile, smaller where a batch of its windows would not fit
        in memory (transformers' default windows are hundreds of pixels wide)."""
        cfg = self.tiling[scale]
        fits = auto_tile_size(self.backend, scale, cfg.margin, device=self.backend.device, batch=batch)
        return max(cfg.align, min(cfg.tile_size, fits) // cfg.align * cfg.align)

    def _shared_body(self):
        if self.backend_name != "torch" or self.precision != "fp32" or len(self.scales) < 2:
            return None
        srnet = self.loaded.net(self.scales[0])
        return self.loaded.spec.shared_body(getattr(srnet, "net", srnet))  # the network inside the adapter

    @property
    def needs_degradation(self) -> bool:
        return bool(self.loaded.needs_degradation)

    def tiling_request(self, scale: int) -> TilingRequest:
        """Uniform windows where batches form, else the fewest computed pixels (module doc)."""
        return TilingRequest(tile=self.tile_size[scale] if self.uniform_windows else None)

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
        """Per-scale heads, one body for all tiles, per-scale tails (see the module doc)."""
        value_range = self.loaded.net(scales[0]).value_range
        x = windows.to(self.backend.device, torch.float32) * value_range
        if getattr(self.backend, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(scales):
            groups.setdefault(s, []).append(i)
        split = self.shared_body
        body = split.body(torch.cat([split.head(x[idx], s) for s, idx in groups.items()]))
        outputs: list[torch.Tensor | None] = [None] * len(scales)
        start = 0
        for s, idx in groups.items():
            tail = (split.tail(body[start:start + len(idx)], s) / value_range).float().cpu()
            for i, out in zip(idx, tail):
                outputs[i] = out
            start += len(idx)
        return outputs

    def warmup_inputs(self, scale: int, batch: int) -> torch.Tensor:
        """Full-size windows for shape-specialised engines (TensorRT), small ones otherwise: a
        dynamic-shape engine is warm after any shape, and a full window costs seconds on a CPU."""
        cfg = self.tiling[scale]
        side = self.tile_size[scale] + 2 * cfg.margin if self.backend_name == "tensorrt" else WARMUP_SIDE
        side = math.ceil(side / cfg.align) * cfg.align
        return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))

    def describe(self) -> dict:
        info = self.backend.describe() if hasattr(self.backend, "describe") else {"backend": self.backend_name}
        return {
            "name": self.name, "architecture": self.architecture, "scales": self.scales,
            "description": self.loaded.entry.description if self.loaded.entry is not None else
            self.loaded.spec.description,
            "trained_for": self.loaded.entry.trained_for if self.loaded.entry is not None else "bicubic",
            "backend": info.get("backend", self.backend_name), "backend_selected": info.get("selected"),
            "device": str(self.backend.device), "precision": self.precision,
            "needs_degradation": self.needs_degradation, "mdsr_cross_scale_batching": self.cross_scale,
            "tiling": {str(s): {"tile_size": self.tile_size[s], "margin": cfg.margin, "feather": cfg.feather,
                                "align": cfg.align, "mode": cfg.mode, "uniform_windows": self.uniform_windows,
                                "receptive_radius": round(cfg.receptive_radius, 2)}
                       for s, cfg in self.tiling.items()},
        }


def weights_identity(loaded) -> str:
    """sha256 over the sha256 of every weights file (hashed now when the repository lacks it);
    ``bicubic`` has none and is named instead. Part of the result cache key."""
    entry = loaded.entry
    if entry is None:
        return loaded.name
    digests = [w.sha256 or sha256_file(entry.path / w.file) for w in entry.weights]
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


@dataclass(frozen=True)
class UpscaleOptions:
    """What a client asks for besides the image (the HTTP layer has validated the types)."""

    model: str | None = None
    scale: int | None = None
    outscale: float | None = None
    self_ensemble: bool = False
    format: str = "png"
    quality: int | None = None


@dataclass(frozen=True)
class UpscaleRequest(UpscaleOptions):
    body: bytes = b""

    @classmethod
    def of(cls, body: bytes, options: UpscaleOptions) -> "UpscaleRequest":
        return cls(body=body, **dataclasses.asdict(options))


@dataclass
class Upscaled:
    data: bytes
    media_type: str
    model: str
    backend: str
    scale: int
    width: int
    height: int
    input_pixels: int
    inference_ms: float
    precision: str = ""  # the engine's precision (fp32, bf16, fp16); "" in job records written before it existed


def create_model_backend(name: str, settings: Settings, repository: Repository):
    """The backend of one model (``bicubic`` always runs on torch: nothing to export)."""
    loaded = repository.load(name, "cpu")
    backend = "torch" if name == BICUBIC else settings.backend
    return create_backend(loaded, backend, device=settings.torch_device, precision=settings.precision,
                          threads=settings.threads, cache_dir=settings.engine_cache, tile=settings.tile_size,
                          max_batch=settings.batch_tiles, builder=ExportBuilder())


def model_names(settings: Settings, repository: Repository) -> list[str]:
    """The models to serve: as configured, else the whole repository plus ``bicubic``."""
    if settings.models:
        return list(dict.fromkeys(settings.models))
    return [*repository.names(), BICUBIC]


def default_scale(scales: list[int]) -> int:
    """x4 (the usual SR benchmark scale) when the model serves it, else its largest."""
    return 4 if 4 in scales else max(scales)


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

    @property
    def batching_pays(self) -> bool:
        """Batches form only on a GPU with more than one tile per batch."""
        return self.device.type == "cuda" and self.settings.batch_tiles > 1

    def load(self) -> None:
        """Loads every model (blocking; run it off the event loop)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        for name in self.check():
            started = time.monotonic()
            backend = create_model_backend(name, self.settings, self.repository)
            self.models[name] = ServedModel(backend, self.settings.tile_size, self.settings.mdsr_cross_scale,
                                            uniform_windows=self.batching_pays, batch=self.settings.batch_tiles)
            log.info("loaded %s (%s %s, scales %s) on %s in %.1fs", name, backend.name, backend.precision,
                     self.models[name].scales, self.device, time.monotonic() - started)
        self.default_model = self.settings.default_model or (
            PREFERRED_DEFAULT_MODEL if PREFERRED_DEFAULT_MODEL in self.models else next(iter(self.models)))
        self.metrics.set_build_info(_version(), str(self.device), [m.backend_name for m in self.models.values()])

    async def warmup(self) -> None:
        """Runs a batch of every model/scale on the inference thread (kernels, allocator, TensorRT
        engines), so the first requests are not slow."""
        for model in self.models.values():
            for scale in model.scales:
                started = time.monotonic()
                x = model.warmup_inputs(scale, self.settings.batch_tiles)
                degradation = None
                if model.needs_degradation:
                    degradation = await self.scheduler.call_async(
                        lambda m=model, s=scale, w=x[:1]: m.backend.degradation(w, s))
                    degradation = degradation.expand(len(x), -1)
                await self.scheduler.call_async(
                    lambda m=model, s=scale, w=x, d=degradation: m.run_tiles(w, [s] * len(w), d))
                log.info("warmed up %s x%d in %.2fs", model.name, scale, time.monotonic() - started)
            if model.cross_scale and self.settings.batch_tiles > 1:
                x = model.warmup_inputs(model.scales[0], len(model.scales))
                await self.scheduler.call_async(lambda m=model, w=x: m.run_tiles(w, list(m.scales), None))

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.io.shutdown(wait=False, cancel_futures=True)

    # --- requests -----------------------------------------------------------------------------
    async def in_io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    def served_model(self, name: str | None) -> ServedModel:
        from .errors import UnknownModel

        name = name or self.default_model
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"no model {name!r}; served: {', '.join(self.models)}")
        return model

    def output_size(self, model: ServedModel, height: int, width: int, scale: int | None, outscale: float | None
                    ) -> OutputSize:
        if scale is None and outscale is None:
            scale = self.settings.default_scale or default_scale(model.scales)
        if scale is not None and scale not in model.scales:
            raise InvalidParameter(f"model {model.name!r} serves scales {model.scales}, not x{scale}")
        size = resolve_output_size(height, width, model.scales, scale=scale, outscale=outscale)
        limit = self.settings.max_output_pixels
        if size.width * size.height > limit:
            raise TooLarge(f"the output would be {size.width}×{size.height} = {size.width * size.height} pixels; "
                           f"the limit is {limit} (SR_MAX_OUTPUT_PIXELS)")
        return size

    def result_identity(self, request: UpscaleRequest) -> dict:
        """Everything besides the body that decides the output, with defaults filled in: the
        model (name, weights sha256, backend, precision) and the normalised parameters. The
        result cache keys on it; raises ``UnknownModel``/``InvalidParameter`` like a request."""
        model = self.served_model(request.model)
        scale, outscale = request.scale, request.outscale
        if scale is None and outscale is None:
            scale = self.settings.default_scale or default_scale(model.scales)
        if scale is not None and scale not in model.scales:
            raise InvalidParameter(f"model {model.name!r} serves scales {model.scales}, not x{scale}")
        fmt = output_format(request.format)
        quality = None if fmt not in DEFAULT_QUALITY else int(request.quality or DEFAULT_QUALITY[fmt])
        return {"model": model.name, "weights_sha256": model.weights_sha256, "backend": model.backend_name,
                "precision": model.precision, "scale": scale, "outscale": outscale,
                "self_ensemble": bool(request.self_ensemble), "format": fmt, "quality": quality}

    def prepare(self, model: ServedModel, request: UpscaleRequest, max_pixels: int | None = None) -> ImageJob:
        """Output size (from the header: limits before any decoding), decode, and the job's tile
        plan (I/O thread)."""
        max_pixels = max_pixels or self.settings.max_pixels
        width, height, _ = probe(request.body, max_pixels)
        size = self.output_size(model, height, width, request.scale, request.outscale)
        raster = read_image(request.body, max_pixels)
        return create_job(model.backend, raster, size, self_ensemble=request.self_ensemble,
                          tiling=model.tiling_request(size.scale))

    def admit(self, tiles: int) -> None:
        """503 when the queues are full; a single large request is let into empty queues. Only
        interactive tiles count: job tiles wait behind them and jobs queue in the job store."""
        queued = self.scheduler.queued_tiles_of(INTERACTIVE)
        if queued and queued + tiles > self.settings.max_queued_tiles:
            raise Unavailable("overloaded", f"{queued} tiles are queued; this request needs {tiles} more "
                              f"(limit {self.settings.max_queued_tiles}); retry later", retry_after=2)

    async def upscale(self, ticket: Ticket, request: UpscaleRequest, *, on_model: Callable[[ServedModel], None]
                      | None = None, on_job: Callable[[ImageJob], None] | None = None,
                      on_progress: Callable[[ImageJob], None] | None = None, max_pixels: int | None = None
                      ) -> Upscaled:
        """One request: decode -> job -> scheduler -> compose -> encode. ``on_model``/``on_job``
        let the caller label metrics as soon as the model and the scale are known;
        ``on_progress`` is told after every tile (collector thread); ``max_pixels`` overrides
        ``SR_MAX_PIXELS`` (jobs)."""
        model = self.served_model(request.model)
        if on_model is not None:
            on_model(model)
        job = await self.in_io(self.prepare, model, request, max_pixels)
        if on_job is not None:
            on_job(job)
        if ticket.priority == INTERACTIVE:
            self.admit(job.tiles_total)
        try:
            await self._set_degradations(ticket, model, job)
            work = ImageWork(ticket, model, job, asyncio.get_running_loop(), on_progress=on_progress)
            self.scheduler.submit(work)
            await work.future
        except BaseException:
            self.scheduler.cancel(ticket)
            raise
        size = job.size
        data = await self.in_io(compose_and_encode, job, request.format, request.quality)
        return Upscaled(data, MEDIA_TYPES[output_format(request.format)], model.name, model.backend_name, size.scale,
                        size.width, size.height, job.raster.width * job.raster.height, ticket.inference_s * 1000,
                        model.precision)

    async def _set_degradations(self, ticket: Ticket, model: ServedModel, job: ImageJob) -> None:
        """DASR: each plane's vector from its whole image, on the inference thread."""
        if not model.needs_degradation:
            return
        for plane in job.planes:
            started = time.monotonic()
            await self.scheduler.call_async(lambda p=plane: set_degradation(model.backend, p))
            ticket.inference_s += time.monotonic() - started


LARGE_OUTPUT_PIXELS = 4 << 20  # after an output this large, freed memory goes back to the OS


def compose_and_encode(job: ImageJob, fmt: str, quality: int | None) -> bytes:
    data = encode_image(job.compose(), fmt, quality)
    if job.size.width * job.size.height >= LARGE_OUTPUT_PIXELS:
        job.planes = []  # the float outputs: the largest buffers of the request
        release_free_memory()
    return data


def _version() -> str:
    from srserve import __version__

    return __version__
