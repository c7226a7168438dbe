"""The FastAPI app: ``create_app(settings)``.

    POST /upscale?model=&scale=[&outscale=][&self_ensemble=][&format=][&quality=]
         body: raw image bytes (image/* or application/octet-stream) or multipart field ``image``
    GET  /v1/models   GET /healthz   GET /readyz   GET /metrics   (OpenAPI at /docs)

Errors are ``{"error": CODE, "detail": MESSAGE}`` (``errors``). Lifecycle: the app listens at
once; models load and warm up in the background (``/readyz`` 503 until done). ``Service.drain``
(SIGTERM, see ``server``) turns ``/readyz`` and new work to 503 and waits for the accepted
requests. Event-loop discipline: decoding, composing and encoding run on the I/O thread pool,
inference on the scheduler's thread; the loop only moves bytes and futures.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from srserve import __version__
from srserve.models.errors import SRError

from .batching import Ticket
from .config import Settings
from .engine import Engine, ServedModel
from .errors import (BadImage, Cancelled, DeadlineExceeded, InvalidParameter, ServiceError, TooLarge, Unauthorized,
                     Unavailable, UnknownModel, UnsupportedMediaType, classify, error_response,
                     service_error_response)
from .metrics import Metrics

log = logging.getLogger("srserve.service")

RESULT_HEADERS = ["X-Model", "X-Scale", "X-Backend", "X-Inference-Ms", "X-Output-Size"]
RAW_TYPES = ("application/octet-stream",)
CLIENT_CLOSED = 499  # nginx's status for a client that went away; only counted, never sent
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
                422: "invalid_parameter", 429: "too_many_requests", 503: "unavailable"}


class ErrorBody(BaseModel):
    error: str
    detail: str


ERROR_RESPONSES = {status: {"model": ErrorBody, "description": text} for status, text in {
    400: "undecodable or corrupt image", 401: "API key missing or wrong", 404: "unknown model",
    413: "body or pixel count over the limits", 415: "not an image media type",
    422: "invalid parameter (e.g. a scale the model lacks)",
    503: "queue full, draining, or still starting (Retry-After)", 504: "request deadline passed"}.items()}

UPSCALE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
}}}


class Service:
    """State shared by the routes: the engine, the lifecycle and the in-flight count."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics(settings.torch_device)
        self.engine = Engine(settings, self.metrics)
        self.state = "starting"  # -> ready | failed; ready -> draining
        self.failure = ""
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._startup: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.engine.start()
        self._startup = asyncio.create_task(self._load_and_warm())

    async def _load_and_warm(self) -> None:
        started = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.load)
            if self.settings.warmup:
                await self.engine.warmup()
        except Exception as exc:  # noqa: BLE001 - reported by /healthz and /readyz, and logged
            self.state, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.error("startup failed: %s", self.failure, exc_info=not isinstance(exc, SRError))
            return
        if self.state == "starting":
            self.state = "ready"
        log.info("ready: %d models in %.1fs (%s)", len(self.engine.models), time.monotonic() - started,
                 ", ".join(self.engine.models))

    async def wait_started(self) -> None:
        if self._startup is not None:
            await asyncio.shield(self._startup)

    def begin_drain(self) -> None:
        if self.state != "draining":
            log.info("draining: %d request(s) in flight", self.inflight)
        self.state = "draining"

    async def drain(self, timeout: float) -> bool:
        """Refuses new work and waits for the accepted requests; True when all finished."""
        self.begin_drain()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("drain timeout: %d request(s) still in flight", self.inflight)
            return False

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)

    # --- /upscale -----------------------------------------------------------------------------
    def _enter(self) -> None:
        if self.state != "ready":
            code, detail, retry = {
                "starting": ("starting", "models are loading; retry shortly", 5),
                "draining": ("draining", "the server is shutting down; retry on another instance", 1),
                "failed": ("unavailable", f"startup failed: {self.failure}", 30),
            }[self.state]
            raise Unavailable(code, detail, retry_after=retry)
        if self.inflight >= self.settings.max_inflight_requests:
            raise Unavailable("overloaded", f"{self.inflight} requests in flight (limit "
                              f"{self.settings.max_inflight_requests}); retry later", retry_after=2)
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.inc()

    def _leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()
        if not self.inflight:
            self._idle.set()

    def served_model(self, name: str | None) -> ServedModel:
        name = name or self.engine.default_model
        model = self.engine.models.get(name)
        if model is None:
            raise UnknownModel(f"no model {name!r}; served: {', '.join(self.engine.models)}")
        return model

    def record(self, model: str, scale: str, status: int, reason: str | None = None) -> None:
        self.metrics.requests.labels(model, scale, str(status)).inc()
        if reason:
            self.metrics.errors.labels(reason).inc()

    async def upscale(self, request: Request, params: "UpscaleParams") -> Response:
        started = time.monotonic()
        labels = ["", ""]
        try:
            self._enter()
        except ServiceError as err:
            self.record(*labels, err.status, err.code)
            return service_error_response(err)
        ticket = Ticket(deadline=started + self.settings.request_timeout_s)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                response = await self._upscale(request, params, ticket, labels)
            self.record(*labels, 200)
            self.metrics.request_duration.labels(*labels).observe(time.monotonic() - started)
            return response
        except TimeoutError:
            self.engine.scheduler.cancel(ticket)
            err = DeadlineExceeded(f"not finished within {self.settings.request_timeout_s:g}s")
        except Cancelled:
            self.engine.scheduler.cancel(ticket)
            self.record(*labels, CLIENT_CLOSED, "client_disconnected")
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # noqa: BLE001 - user errors become 4xx, the rest 500
            self.engine.scheduler.cancel(ticket)
            err = classify(exc)
            if err is None:
                log.exception("internal error serving /upscale")
                self.record(*labels, 500, "internal")
                return error_response(500, "internal", "internal server error (logged)")
        finally:
            self._leave()
        self.record(*labels, err.status, err.code)
        return service_error_response(err)

    async def _upscale(self, request: Request, params: "UpscaleParams", ticket: Ticket, labels: list[str]) -> Response:
        model = self.served_model(params.model)
        labels[0] = model.name
        body = await read_image_body(request, self.settings.max_body_bytes)
        decoded = await self.engine.decode(body)
        scale = params.scale
        if scale is None and params.outscale is None:
            scale = self.settings.default_scale or default_scale(model.scales)
        size = self.engine.output_size(model, decoded, scale, params.outscale)
        labels[1] = str(size.scale)
        self.engine.admit(self.engine.tiles_needed(model, decoded, size.scale, params.self_ensemble))
        result = await watch_disconnect(request, self.engine.upscale(
            ticket, model, decoded, size, params.self_ensemble, params.format, params.quality))
        raster = decoded.raster
        self.metrics.input_pixels.labels(model.name).inc(raster.width * raster.height)
        self.metrics.output_pixels.labels(model.name).inc(result.width * result.height)
        headers = {"X-Model": model.name, "X-Scale": str(size.scale), "X-Backend": model.backend_name,
                   "X-Inference-Ms": f"{result.inference_ms:.1f}", "X-Output-Size": f"{result.width}x{result.height}"}
        return Response(result.data, media_type=result.media_type, headers=headers)

    # --- /v1/models ---------------------------------------------------------------------------
    def describe(self) -> dict:
        s = self.settings
        return {
            "default_model": self.engine.default_model, "default_scale": s.default_scale, "state": self.state,
            "models": [m.describe() for m in self.engine.models.values()],
            "batching": {"device": str(self.engine.device), "max_batch_tiles": s.batch_tiles,
                         "max_delay_ms": s.max_delay_ms, "max_queued_tiles": s.max_queued_tiles,
                         "max_inflight_requests": s.max_inflight_requests},
            "limits": {"max_body_bytes": s.max_body_bytes, "max_pixels": s.max_pixels,
                       "request_timeout_s": s.request_timeout_s},
        }


def default_scale(scales: list[int]) -> int:
    """x4 (the usual SR benchmark scale) when the model serves it, else its largest."""
    return 4 if 4 in scales else max(scales)


class UpscaleParams(BaseModel):
    model: str | None = None
    scale: int | None = None
    outscale: float | None = None
    self_ensemble: bool = False
    format: str = "png"
    quality: int | None = None


def upscale_params(
    model: str | None = Query(None, max_length=64, description="model name (default from config)"),
    scale: int | None = Query(None, ge=1, le=16, description="native scale (default from config)"),
    outscale: float | None = Query(None, gt=0, le=16, description="any output scale: the smallest native scale "
                                   ">= it runs, then an antialiased LANCZOS resize"),
    self_ensemble: bool = Query(False, description="geometric self-ensemble x8 (8x the compute)"),
    format: Literal["png", "jpeg", "jpg", "webp"] = Query("png", description="output format"),
    quality: int | None = Query(None, ge=1, le=100, description="JPEG/WebP quality (default 95/90)"),
) -> UpscaleParams:
    return UpscaleParams(model=model, scale=scale, outscale=outscale, self_ensemble=self_ensemble, format=format,
                         quality=quality)


# --- request bodies ---------------------------------------------------------------------------
def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def is_image_type(value: str) -> bool:
    return value.startswith("image/") or value in RAW_TYPES


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` (Content-Length first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Cancelled() from None
    return b"".join(chunks)


async def read_image_body(request: Request, limit: int) -> bytes:
    """The image bytes of a raw (image/*) or multipart (field ``image``) body."""
    kind = media_type(request.headers.get("content-type"))
    if kind == "multipart/form-data":
        return await image_from_multipart(request, await read_limited(request, limit))
    if not is_image_type(kind):
        raise UnsupportedMediaType(f"Content-Type {kind or '(none)'} is not an image; send the image bytes with "
                                   "an image/* Content-Type, or multipart/form-data with a field 'image'")
    body = await read_limited(request, limit)
    if not body:
        raise BadImage("the body is empty; send the image bytes")
    return body


async def image_from_multipart(request: Request, body: bytes) -> bytes:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
    except Exception as exc:  # noqa: BLE001 - the multipart parser's own errors (malformed body)
        raise BadImage(f"malformed multipart body: {getattr(exc, 'detail', None) or exc}") from None
    try:
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise InvalidParameter("the multipart body needs a file field named 'image'")
        kind = media_type(part.content_type)
        if kind and not is_image_type(kind):
            raise UnsupportedMediaType(f"the 'image' part is {kind}, not an image")
        data = await part.read()
    finally:
        await form.close()
    if not data:
        raise BadImage("the 'image' part is empty")
    return data


async def watch_disconnect(request: Request, work):
    """Awaits ``work``, cancelling it (``Cancelled``) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise Cancelled()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# --- the app ------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.drain(settings.drain_timeout_s)
            await service.stop()

    app = FastAPI(title="srserve", version=__version__, lifespan=lifespan,
                  description="Single-image super-resolution with cross-request tile batching.")
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=RESULT_HEADERS)

    def authorize(request: Request) -> None:
        if not settings.api_keys:
            return
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if key is None and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")

    @app.post("/upscale", dependencies=[Depends(authorize)], openapi_extra=UPSCALE_BODY,
              responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
                               "description": "the upscaled image; headers " + ", ".join(RESULT_HEADERS)},
                         **ERROR_RESPONSES},
              response_class=Response, summary="Upscale an image")
    async def upscale(request: Request, params: UpscaleParams = Depends(upscale_params)) -> Response:
        return await service.upscale(request, params)

    @app.get("/v1/models", dependencies=[Depends(authorize)], summary="Served models, scales, backends, tiling")
    async def models() -> dict:
        return service.describe()

    @app.get("/healthz", summary="Alive (503 only when startup failed)")
    async def healthz() -> Response:
        if service.state == "failed":
            return error_response(503, "startup_failed", service.failure)
        return JSONResponse({"status": "ok", "state": service.state})

    @app.get("/readyz", summary="Ready: every model loaded and warmed up, not draining")
    async def readyz() -> Response:
        if service.state != "ready":
            return error_response(503, "not_ready", f"state: {service.state}", {"Retry-After": "5"})
        return JSONResponse({"status": "ready", "models": list(service.engine.models)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app, service)
    return app


def install_error_handlers(app: FastAPI, service: Service) -> None:
    def counted(request: Request, status: int, code: str) -> None:
        if request.url.path == "/upscale":
            service.record("", "", status, code)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        counted(request, exc.status, exc.code)
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        counted(request, 422, "invalid_parameter")
        return error_response(422, "invalid_parameter", "; ".join(_validation_message(e) for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_bug(request: Request, exc: Exception) -> Response:
        log.exception("internal error serving %s", request.url.path)
        return error_response(500, "internal", "internal server error (logged)")


def _validation_message(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
    given = error.get("input")
    suffix = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    return f"{where}: {error.get('msg', 'invalid')}{suffix}"
