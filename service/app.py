"""The FastAPI app: ``create_app(settings)``.

    POST /upscale?model=&scale=[&outscale=][&self_ensemble=][&format=][&quality=]
         body: raw image bytes (image/*) or multipart field ``image``       (routes/upscale.py)
    POST /v1/jobs (same parameters and body)   GET /v1/jobs/{id}   GET /v1/jobs/{id}/result
    DELETE /v1/jobs/{id}                                                    (routes/jobs.py)
    GET  /v1/models   GET /healthz   GET /readyz   GET /metrics             (routes/system.py)
    GET  /  (the web page, service/web)                                     (routes/web.py)
    OpenAPI at /docs

Errors are ``{"error": CODE, "detail": MESSAGE}`` (``errors``). The domain (lifecycle, admission,
the engine) is ``domain.Service``; this module only wires it to HTTP: routers, dependencies
(``deps``), the lifespan and the error handlers. Event-loop discipline: decoding, composing and
encoding run on the I/O thread pool, inference on the scheduler's thread; the loop only moves
bytes and futures.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from srserve import __version__

from .config import Settings
from .deps import no_repeated_parameters, shorten
from .domain import InternalError, Service
from .errors import ServiceError, error_response, service_error_response
from .routes import jobs_router, system_router, upscale_router, web_router
from .routes.upscale import RESULT_HEADERS

log = logging.getLogger("srserve.service")

STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 410: "expired", 413: "too_large", 415: "unsupported_media_type",
                422: "invalid_parameter", 429: "too_many_requests", 503: "unavailable"}


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
                  dependencies=[Depends(no_repeated_parameters)],
                  description="Single-image super-resolution with cross-request tile batching.")
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"],
                           expose_headers=[*RESULT_HEADERS, "Location"])
    app.include_router(upscale_router)
    app.include_router(jobs_router)
    app.include_router(system_router)
    app.include_router(web_router)
    install_error_handlers(app, service)
    return app


def install_error_handlers(app: FastAPI, service: Service) -> None:
    def counted(request: Request, status: int, code: str) -> None:
        if request.url.path == "/upscale":
            service.record("", "", status, code)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        counted(request, exc.status, exc.code)  # raised by a dependency (the route answers its own)
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        counted(request, 422, "invalid_parameter")
        return error_response(422, "invalid_parameter", "; ".join(_validation_message(e) for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = STATUS_CODES.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names the methods of one matching route, not all of them
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request.scope))}
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(InternalError)
    @app.exception_handler(Exception)
    async def server_bug(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, InternalError):  # InternalError was logged where it happened
            log.exception("internal error serving %s", request.url.path)
        return error_response(500, "internal", "internal server error (logged)")


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route serves at this path (for a 405's Allow header)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _validation_message(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
    given = error.get("input")
    suffix = f" (got {shorten(repr(given))})" if given is not None and not isinstance(given, dict) else ""
    return f"{where}: {error.get('msg', 'invalid')}{suffix}"
