"""Models, health, readiness and metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import authorize, get_service
from ..domain import Service
from ..errors import error_response

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(authorize)], summary="Served models, scales, backends, tiling")
async def models(service: Service = Depends(get_service)) -> dict:
    return service.describe()


@router.get("/healthz", summary="Alive (503 only when startup failed)")
async def healthz(service: Service = Depends(get_service)) -> Response:
    if service.state == "failed":
        return error_response(503, "startup_failed", service.failure)
    return JSONResponse({"status": "ok", "state": service.state})


@router.get("/readyz", summary="Ready: every model loaded and warmed up, not draining")
async def readyz(service: Service = Depends(get_service)) -> Response:
    if service.state != "ready":
        return error_response(503, "not_ready", f"state: {service.state}", {"Retry-After": "5"})
    return JSONResponse({"status": "ready", "models": list(service.engine.models)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def metrics(service: Service = Depends(get_service)) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
