"""Shared pieces of the service tests: a tiny random-weight repository, test images, an app
running in-process (httpx over ASGI) with its lifespan, and PNG decoding."""
from __future__ import annotations

import asyncio
import io
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pipeline_nets import tiny_repository
from srserve.service.app import create_app
from srserve.service.config import Settings

# small enough for a 2-core CPU; every architecture family and both MDSR-style multi-scale models
MODELS = ("edsr", "mdsr", "dasr", "vdsr", "rrdb2")
TILE = 16  # small tiles so that every test image is several tiles


def make_repository(root: Path) -> Path:
    tiny_repository(root, names=MODELS)
    return root


def service_settings(repository: Path, **overrides) -> Settings:
    """Small tiles and batches; torch unless a test asks for another engine (auto would export and
    compile every tiny model); the result cache off (tests that repeat a request expect it to run
    again) unless a test turns it on with ``cache_bytes``; a job spool of its own (a server on this
    machine may hold the default one)."""
    values = dict(repository=repository, backend="torch", tile_size=TILE, max_batch_tiles=4, max_delay_ms=20,
                  drain_timeout_s=30, cache_bytes=0, jobs_dir=Path(tempfile.mkdtemp(prefix="srserve-jobs-")))
    values.update(overrides)
    return Settings(**values)


def image_array(height: int, width: int, channels: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Smooth shapes plus noise: structure at several scales, like a photo, reproducible."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = [0.5 + 0.4 * np.sin(xx / (3 + 2 * c + seed % 3) + yy / (5 + c)) for c in range(channels)]
    a = np.stack(base, axis=-1) + rng.normal(0, 0.05, (height, width, channels))
    top = np.iinfo(dtype).max
    return np.clip(np.rint(a * top), 0, top).astype(dtype)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, mode).save(buf, fmt)
    return buf.getvalue()


def image_bytes(height: int, width: int, channels: int = 3, seed: int = 0, fmt: str = "PNG") -> bytes:
    return encode(image_array(height, width, channels, seed), fmt)


def decode(data: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(data)))
    return (a[..., None] if a.ndim == 2 else a).astype(np.int16)


def max_diff(a: bytes, b: bytes) -> int:
    x, y = decode(a), decode(b)
    assert x.shape == y.shape, (x.shape, y.shape)
    return int(np.abs(x - y).max())


MIXED = [  # (model, query, height, width, seed): models, scales, sizes, ensemble, outscale
    ("edsr", "scale=2", 40, 33, 0), ("mdsr", "scale=2", 21, 35, 1), ("mdsr", "scale=3", 40, 40, 2),
    ("mdsr", "scale=4", 17, 23, 3), ("dasr", "scale=2", 33, 29, 4), ("vdsr", "scale=3", 26, 31, 5),
    ("rrdb2", "scale=2", 30, 34, 6), ("bicubic", "scale=4", 25, 19, 7), ("mdsr", "outscale=1.7", 28, 24, 8),
    ("edsr", "scale=2&self_ensemble=true", 18, 22, 9), ("mdsr", "scale=4", 48, 40, 10), ("edsr", "scale=2", 9, 7, 11),
]


def mixed_requests(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        model, query, h, w, seed = MIXED[i % len(MIXED)]
        out.append((f"model={model}&{query}", image_bytes(h + i % 3, w, seed=seed + i)))
    return out


@asynccontextmanager
async def running_app(settings: Settings, *, wait_ready: bool = True):
    """The app with its lifespan (startup, drain, shutdown) and an httpx client over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        service = app.state.service
        if wait_ready:
            await service.wait_started()
            assert service.state == "ready", service.failure
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://srserve.test", timeout=120) as client:
            yield app, client


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def metric_sum(text: str, name: str, **labels) -> float:
    """Sum over every sample of ``name`` matching ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += float(sample.value)
    return total


def run(coro):
    return asyncio.run(coro)


def big_header_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG file of a huge 1-bit image (the pixel limit must come from the header)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def pipeline_result(repo, name: str, scale: int, body: bytes, self_ensemble: bool = False) -> np.ndarray:
    """What ``srserve upscale`` computes with the same tiles (the reference for the server)."""
    from srserve.backends import TorchBackend
    from srserve.models.repository import Repository
    from srserve.pipeline.image import OutputSize, upscale_raster
    from srserve.pipeline.imageio import read_image
    from srserve.pipeline.tiling import default_tiling

    backend = TorchBackend(Repository(repo).load(name))
    raster = read_image(body)
    cfg = default_tiling(backend, scale)
    out = upscale_raster(backend, raster, OutputSize(scale, raster.height * scale, raster.width * scale),
                         tile=TILE, margin=cfg.margin, feather=cfg.feather, self_ensemble=self_ensemble)
    return out.pixels.astype(np.int16)
