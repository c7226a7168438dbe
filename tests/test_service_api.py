"""The HTTP API in-process (httpx over ASGI, with the app's lifespan): results equal the pipeline,
concurrent batched requests equal serial ones, every error status from a real bad input, the
lifecycle and the metrics."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from service_fixtures import (MODELS, TILE, big_header_png, decode, encode, image_array, image_bytes, make_repository,
                              max_diff, metric, metric_sum, mixed_requests, pipeline_result, run, running_app,
                              service_settings)
from srserve.backends import TorchBackend
from srserve.models.repository import Repository
from srserve.pipeline.image import OutputSize, upscale_raster
from srserve.pipeline.imageio import read_image

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("service-repo"))


async def post(client, query: str, body: bytes, headers=PNG, **kw):
    return await client.post(f"/upscale?{query}", content=body, headers=headers, **kw)


# --- results --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,scale,self_ensemble", [
    ("edsr", 2, False), ("mdsr", 3, False), ("dasr", 2, False), ("vdsr", 4, False), ("rrdb2", 2, False),
    ("mdsr", 2, True), ("bicubic", 3, False),
])
def test_result_equals_pipeline(repo, name, scale, self_ensemble):
    body = image_bytes(37, 45, seed=3)

    async def scenario():
        async with running_app(service_settings(repo, models=[name])) as (_, client):
            query = f"model={name}&scale={scale}&self_ensemble={str(self_ensemble).lower()}"
            return await post(client, query, body)

    r = run(scenario())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-model"] == name and r.headers["x-scale"] == str(scale)
    assert r.headers["x-backend"] == "torch" and r.headers["x-precision"] == "fp32"
    assert float(r.headers["x-inference-ms"]) > 0
    served = decode(r.content)
    if name == "bicubic":
        backend = TorchBackend(Repository(repo).load(name))
        raster = read_image(body)
        expected = upscale_raster(backend, raster, OutputSize(scale, 37 * scale, 45 * scale)).pixels.astype(np.int16)
    else:
        expected = pipeline_result(repo, name, scale, body, self_ensemble)
    assert served.shape == expected.shape == (37 * scale, 45 * scale, 3)
    assert np.abs(served - expected).max() <= 1


def test_formats_alpha_gray_16bit_outscale_multipart(repo):
    rgba = image_array(30, 26, 4, seed=1)
    rgba[..., 3] = np.linspace(0, 255, 26, dtype=np.uint8)[None, :]  # real transparency: alpha runs too
    gray16 = image_array(20, 22, 1, seed=2, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16[..., 0]).save(buf, "PNG")

    async def scenario():
        async with running_app(service_settings(repo)) as (_, client):
            a = await post(client, "model=edsr&scale=2", encode(rgba))
            b = await post(client, "model=edsr&scale=2&format=jpeg&quality=80", image_bytes(24, 20))
            c = await post(client, "model=mdsr&outscale=2.5&format=webp", image_bytes(24, 20))
            d = await post(client, "model=edsr&scale=2", buf.getvalue())
            e = await client.post("/upscale?model=edsr&scale=2", files={"image": ("x.png", encode(rgba), "image/png")})
            f = await post(client, "model=mdsr&outscale=1.5", image_bytes(24, 20), headers={
                "Content-Type": "application/octet-stream"})
            return a, b, c, d, e, f

    a, b, c, d, e, f = run(scenario())
    assert all(r.status_code == 200 for r in (a, b, c, d, e, f)), [r.text for r in (a, b, c, d, e, f)]
    assert decode(a.content).shape == (60, 52, 4)
    assert b.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(b.content)).format == "JPEG"
    assert c.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(c.content)).size == (50, 60)
    assert c.headers["x-scale"] == "3"  # outscale 2.5 runs the x3 head, then resizes
    img16 = Image.open(io.BytesIO(d.content))
    assert img16.size == (44, 40) and img16.mode.startswith("I")  # 16-bit gray stays 16-bit gray
    assert e.content == a.content  # multipart = raw body
    assert Image.open(io.BytesIO(f.content)).size == (30, 36)
    expected = pipeline_result(repo, "edsr", 2, encode(rgba))
    assert np.abs(decode(a.content) - expected).max() <= 1


def test_concurrent_mixed_requests_equal_serial(repo):
    requests = mixed_requests(32)

    async def scenario():
        async with running_app(service_settings(repo, max_batch_tiles=8, max_delay_ms=30)) as (app, client):
            serial = [await post(client, q, body) for q, body in requests]
            before = (await client.get("/metrics")).text
            concurrent = await asyncio.gather(*(post(client, q, body) for q, body in requests))
            after = (await client.get("/metrics")).text
            return serial, concurrent, before, after, app.state.service.engine.scheduler.queued_tiles

    serial, concurrent, before, after, queued = run(scenario())
    for (query, _), s, c in zip(requests, serial, concurrent):
        assert s.status_code == c.status_code == 200, (query, s.text, c.text)
        assert max_diff(s.content, c.content) <= 1, query
    # batching happened: more tiles than backend calls while concurrent
    calls = metric_sum(after, "sr_batch_size_count") - metric_sum(before, "sr_batch_size_count")
    tiles = metric_sum(after, "sr_batch_size_sum") - metric_sum(before, "sr_batch_size_sum")
    assert tiles / calls > 1.5, (tiles, calls)
    assert metric(after, "sr_batch_size_bucket", le="1.0") < metric(after, "sr_batch_size_count")
    assert queued == 0 and metric_sum(after, "sr_queue_depth") == 0
    assert metric(after, "sr_inflight_requests") == 0


def test_mdsr_mixed_scale_batch_equals_single_scale(repo):
    from srserve.service.engine import ServedModel

    backend = TorchBackend(Repository(repo).load("mdsr"))
    model = ServedModel(backend, TILE, cross_scale=True)
    assert model.cross_scale and model.queue_scale(3) is None
    x = torch.rand(5, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    scales = [2, 4, 3, 2, 4]
    mixed = model.run_tiles(x, scales, None)
    for i, s in enumerate(scales):
        alone = backend.run(x[i:i + 1], s)[0]
        assert mixed[i].shape == alone.shape == (3, 20 * s, 20 * s)
        assert torch.allclose(mixed[i], alone, atol=1e-4)


def test_dasr_degradation_once_per_image(repo, monkeypatch):
    calls = []
    original = TorchBackend.degradation

    def counting(self, x, scale):
        calls.append(tuple(x.shape))
        return original(self, x, scale)

    monkeypatch.setattr(TorchBackend, "degradation", counting)

    async def scenario():
        async with running_app(service_settings(repo, models=["dasr"], warmup=False)) as (_, client):
            return await post(client, "model=dasr&scale=2&self_ensemble=true", image_bytes(40, 36))

    r = run(scenario())
    assert r.status_code == 200, r.text
    assert calls == [(1, 3, 40, 36)]  # the whole image once; 9 tiles x 8 transforms reuse it


# --- errors ---------------------------------------------------------------------------------------

def test_error_statuses(repo):
    good = image_bytes(20, 20)

    async def scenario():
        settings = service_settings(repo, max_body_bytes=200_000, max_pixels=200_000, api_keys=["k1", "k2"])
        async with running_app(settings) as (_, client):
            auth = {"X-API-Key": "k2", **PNG}
            results = {
                "ok_x_api_key": await post(client, "model=edsr", good, headers=auth),
                "ok_bearer": await post(client, "model=edsr", good, headers={"Authorization": "Bearer k1", **PNG}),
                "no_key": await post(client, "model=edsr", good),
                "wrong_key": await post(client, "model=edsr", good, headers={"X-API-Key": "nope", **PNG}),
                "garbage": await post(client, "model=edsr", b"this is not an image" * 10, headers=auth),
                "truncated": await post(client, "model=edsr", good[: len(good) // 2], headers=auth),
                "empty": await post(client, "model=edsr", b"", headers=auth),
                "unknown_model": await post(client, "model=nosuch", good, headers=auth),
                "body_too_large": await post(client, "model=edsr", b"\0" * 300_000, headers=auth),
                "pixels_too_large": await post(client, "model=edsr", big_header_png(2000, 2000), headers=auth),
                "text_plain": await post(client, "model=edsr", good, headers={"X-API-Key": "k1",
                                                                            "Content-Type": "text/plain"}),
                "no_content_type": await client.post("/upscale?model=edsr", content=good, headers={"X-API-Key": "k1"}),
                "multipart_text": await client.post("/upscale?model=edsr", headers={"X-API-Key": "k1"},
                                                    files={"image": ("a.txt", b"hello", "text/plain")}),
                "multipart_no_field": await client.post("/upscale?model=edsr", headers={"X-API-Key": "k1"},
                                                        files={"picture": ("a.png", good, "image/png")}),
                "missing_scale": await post(client, "model=edsr&scale=3", good, headers=auth),
                "scale_text": await post(client, "model=mdsr&scale=abc", good, headers=auth),
                "quality_zero": await post(client, "model=edsr&format=jpeg&quality=0", good, headers=auth),
                "bad_format": await post(client, "model=edsr&format=gif", good, headers=auth),
                "outscale_too_big": await post(client, "model=mdsr&outscale=6", good, headers=auth),
                "models_no_key": await client.get("/v1/models"),
                "models": await client.get("/v1/models", headers={"Authorization": "Bearer k1"}),
                "no_route": await client.get("/nope"),
                "healthz": await client.get("/healthz"),
            }
            return results, (await client.get("/metrics")).text

    r, metrics = run(scenario())
    expected = {"ok_x_api_key": 200, "ok_bearer": 200, "no_key": 401, "wrong_key": 401, "garbage": 400,
                "truncated": 400, "empty": 400, "unknown_model": 404, "body_too_large": 413,
                "pixels_too_large": 413, "text_plain": 415, "no_content_type": 415, "multipart_text": 415,
                "multipart_no_field": 422, "missing_scale": 422, "scale_text": 422, "quality_zero": 422,
                "bad_format": 422, "outscale_too_big": 422, "models_no_key": 401, "models": 200, "no_route": 404,
                "healthz": 200}
    assert {k: v.status_code for k, v in r.items()} == expected, {k: v.text[:200] for k, v in r.items()}
    codes = {"no_key": "unauthorized", "garbage": "bad_image", "truncated": "bad_image", "unknown_model":
             "unknown_model", "body_too_large": "too_large", "pixels_too_large": "too_large",
             "text_plain": "unsupported_media_type", "missing_scale": "invalid_parameter",
             "scale_text": "invalid_parameter", "no_route": "not_found"}
    for name, code in codes.items():
        body = r[name].json()
        assert body["error"] == code and isinstance(body["detail"], str) and body["detail"], (name, body)
    assert r["no_key"].headers["www-authenticate"] == "Bearer"
    assert "scale" in r["scale_text"].json()["detail"]
    assert "x3" in r["missing_scale"].json()["detail"]
    assert [m["name"] for m in r["models"].json()["models"]] == [*sorted(MODELS), "bicubic"]
    assert metric(metrics, "sr_requests_total", model="edsr", scale="2", status="200") == 2
    assert metric(metrics, "sr_requests_total", model="", scale="", status="401") == 2
    assert metric(metrics, "sr_errors_total", reason="bad_image") == 3
    assert metric(metrics, "sr_errors_total", reason="too_large") == 2
    assert metric(metrics, "sr_errors_total", reason="invalid_parameter") == 6
    assert metric(metrics, "sr_input_pixels_total", model="edsr") == 2 * 400
    assert metric(metrics, "sr_output_pixels_total", model="edsr") == 2 * 1600


async def wait_until(condition, timeout_s: float = 30.0) -> None:
    """Poll the service state instead of sleeping a guessed time (CI machines differ in speed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the service never reached the expected state"
        await asyncio.sleep(0.001)


def test_overload_timeout_and_drain_statuses(repo):
    big = image_bytes(128, 128, seed=1)  # 64 tiles, x8 with self-ensemble, one tile per batch

    async def inflight_limit():
        settings = service_settings(repo, models=["edsr"], max_inflight_requests=1, max_batch_tiles=1)
        async with running_app(settings) as (app, client):
            service = app.state.service
            first = asyncio.create_task(post(client, "model=edsr&self_ensemble=true", big))
            await wait_until(lambda: service.engine.scheduler.queued_tiles > 0)
            return await post(client, "model=edsr", image_bytes(8, 8)), await first

    async def queue_limit_timeout_drain():
        settings = service_settings(repo, models=["edsr"], max_batch_tiles=1, max_queued_tiles=2500,
                                    request_timeout_s=1.5)
        async with running_app(settings) as (app, client):
            service = app.state.service
            out = {}
            huge = image_bytes(256, 256)  # 256 tiles x 8 = 2048 tile jobs: far more than 1.5 s on a CPU
            first = asyncio.create_task(post(client, "model=edsr&self_ensemble=true", huge))
            await wait_until(lambda: service.engine.scheduler.queued_tiles > 0)
            out["queue_full"] = await post(client, "model=edsr&self_ensemble=true", huge)
            out["small_meanwhile"] = await post(client, "model=edsr", image_bytes(8, 8))  # fits, served fairly
            out["timeout"] = await first
            out["queued_after_timeout"] = service.engine.scheduler.queued_tiles
            service.begin_drain()
            out["draining"] = await post(client, "model=edsr", image_bytes(8, 8))
            out["readyz"] = await client.get("/readyz")
            return out, (await client.get("/metrics")).text

    inflight_full, first = run(inflight_limit())
    assert inflight_full.status_code == 503 and inflight_full.json()["error"] == "overloaded"
    assert first.status_code == 200  # the accepted one is served
    out, metrics = run(queue_limit_timeout_drain())
    for name in ("queue_full", "draining"):
        assert out[name].status_code == 503, (name, out[name].text)
        assert int(out[name].headers["retry-after"]) >= 1
    assert out["queue_full"].json()["error"] == "overloaded"
    assert out["draining"].json()["error"] == "draining"
    assert out["small_meanwhile"].status_code == 200  # not stuck behind the 2000 queued tiles
    assert out["timeout"].status_code == 504 and out["timeout"].json()["error"] == "timeout"
    assert out["queued_after_timeout"] == 0  # the expired request's tiles were dropped
    assert out["readyz"].status_code == 503
    assert metric(metrics, "sr_errors_total", reason="timeout") == 1
    assert metric(metrics, "sr_errors_total", reason="overloaded") == 1
    assert metric(metrics, "sr_errors_total", reason="draining") == 1
    assert metric_sum(metrics, "sr_queue_depth") == 0


def test_internal_error_is_500_json(repo, monkeypatch):
    from srserve.service import engine

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine, "compose_and_encode", broken)

    async def scenario():
        async with running_app(service_settings(repo, models=["edsr"])) as (_, client):
            bad = await post(client, "model=edsr", image_bytes(10, 10))
            return bad, (await client.get("/metrics")).text

    bad, metrics = run(scenario())
    assert bad.status_code == 500 and bad.json() == {"error": "internal", "detail": "internal server error (logged)"}
    assert metric(metrics, "sr_errors_total", reason="internal") == 1


def test_client_disconnect_drops_queued_tiles(repo):
    """A request whose client goes away is cancelled and its queued tiles leave the queues."""
    from srserve.service.bodies import watch_disconnect
    from srserve.service.errors import Cancelled

    class GoneClient:
        async def receive(self):
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

    async def scenario():
        async with running_app(service_settings(repo, models=["rrdb2"], max_batch_tiles=1)) as (app, _):
            service = app.state.service
            engine = service.engine
            from srserve.service.batching import Ticket
            from srserve.service.engine import UpscaleRequest

            ticket = Ticket(deadline=1e18)
            request = UpscaleRequest(body=image_bytes(64, 64), model="rrdb2", scale=2, self_ensemble=True)
            work = engine.upscale(ticket, request)
            with pytest.raises(Cancelled):
                await watch_disconnect(GoneClient(), work)
            engine.scheduler.cancel(ticket)
            return ticket, engine.scheduler.queued_tiles

    ticket, queued = run(scenario())
    assert ticket.cancelled and queued == 0


# --- lifecycle and metadata ---------------------------------------------------------------------------

def test_readyz_false_until_warm_then_models(repo):
    async def scenario():
        async with running_app(service_settings(repo, models=["mdsr", "bicubic"], default_model="mdsr",
                                             default_scale=2), wait_ready=False) as (app, client):
            early = await client.get("/readyz")
            early_upscale = await post(client, "", image_bytes(12, 12))
            await app.state.service.wait_started()
            ready = await client.get("/readyz")
            models = (await client.get("/v1/models")).json()
            default = await post(client, "", image_bytes(12, 12))
            return early, early_upscale, ready, models, default

    early, early_upscale, ready, models, default = run(scenario())
    assert early.status_code == 503 and early.json()["error"] == "not_ready"
    assert early_upscale.status_code == 503 and early_upscale.json()["error"] == "starting"
    assert ready.status_code == 200
    assert models["default_model"] == "mdsr"
    mdsr = models["models"][0]
    assert mdsr["architecture"] == "mdsr" and mdsr["scales"] == [2, 3, 4] and mdsr["backend"] == "torch"
    assert mdsr["trained_for"] == "bicubic"
    assert mdsr["tiling"]["2"]["tile_size"] == TILE and mdsr["precision"] == "fp32"
    assert default.status_code == 200 and default.headers["x-model"] == "mdsr" and default.headers["x-scale"] == "2"


def test_startup_failure_reported(tmp_path):
    repo = make_repository(tmp_path / "repo")
    (repo / "edsr" / "x2.safetensors").write_bytes(b"corrupt")

    async def scenario():
        async with running_app(service_settings(repo, models=["edsr"]), wait_ready=False) as (app, client):
            await app.state.service.wait_started()
            return await client.get("/healthz"), await client.get("/readyz"), await post(client, "", image_bytes(8, 8))

    health, ready, up = run(scenario())
    assert health.status_code == 503 and health.json()["error"] == "startup_failed"
    assert "unreadable" in health.json()["detail"]
    assert ready.status_code == 503 and up.status_code == 503


def test_openapi_documents_the_api(repo):
    async def scenario():
        async with running_app(service_settings(repo, models=["edsr"])) as (_, client):
            return (await client.get("/openapi.json")).json(), await client.get("/docs")

    spec, docs = run(scenario())
    assert docs.status_code == 200
    up = spec["paths"]["/upscale"]["post"]
    assert {"image/*", "multipart/form-data"} <= set(up["requestBody"]["content"])
    assert {p["name"] for p in up["parameters"]} >= {"model", "scale", "outscale", "self_ensemble", "format", "quality"}
    assert {"400", "401", "404", "413", "415", "422", "503", "504"} <= set(up["responses"])
    assert {"/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batched_equals_cpu_and_reports_gpu_memory(repo):
    requests = mixed_requests(16)

    async def serve(device: str):
        async with running_app(service_settings(repo, device=device, max_batch_tiles=None)) as (_, client):
            results = await asyncio.gather(*(post(client, q, body) for q, body in requests))
            return results, (await client.get("/metrics")).text

    gpu, metrics = run(serve("cuda"))
    cpu, _ = run(serve("cpu"))
    for (query, _), g, c in zip(requests, gpu, cpu):
        assert g.status_code == c.status_code == 200, (query, g.text)
        assert max_diff(g.content, c.content) <= 1, query
    assert metric(metrics, "sr_gpu_memory_reserved_bytes", device="cuda") > 0
    assert metric_sum(metrics, "sr_batch_size_sum") > metric_sum(metrics, "sr_batch_size_count")
