"""``/v1/jobs``: durable asynchronous upscaling with progress (the domain: ``jobs.JobManager``)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from ..bodies import read_image_body
from ..deps import authorize, get_service, upscale_params
from ..engine import UpscaleOptions
from ..domain import Service
from ..errors import ERROR_RESPONSES, ErrorBody
from ..jobs import JobRecord
from .upscale import NOT_MODIFIED, RESULT_RESPONSE, UPSCALE_BODY, image_response

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Path(..., pattern=r"^[A-Za-z0-9_-]{8,64}$", description="the id POST /v1/jobs returned")
JOB_ERRORS = {**ERROR_RESPONSES, 404: {"model": ErrorBody,
                                       "description": "no such job (or another API key's), or not finished"},
              410: {"model": ErrorBody, "description": "the result expired (SR_JOB_TTL_S)"}}


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def links(job_id: str) -> dict:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


def job_view(record: JobRecord, now: float | None = None) -> dict:
    """What GET /v1/jobs/{id} answers: status, progress and an estimate of the time left
    (elapsed × tiles left / tiles done, for the current attempt)."""
    now = time.time() if now is None else now
    done, total = record.tiles_done, record.tiles_total
    progress = 1.0 if record.status == "done" else (done / total if total else 0.0)
    eta = None
    if record.status == "running" and done and record.started_at is not None:
        eta = round((now - record.started_at) * (total - done) / done, 1)
    view = {"id": record.id, "status": record.status, "tiles_done": done, "tiles_total": total,
            "progress": round(progress, 4), "eta_s": eta, "attempts": record.attempts,
            "worker": record.owner or None,
            "created_at": iso(record.created_at), "started_at": iso(record.started_at),
            "finished_at": iso(record.finished_at), "expires_at": iso(record.expires_at),
            "expired": record.expired, "params": record.params, "links": links(record.id)}
    if record.status == "failed":
        view["error"] = {"error": record.error, "detail": record.detail}
    if record.status == "done" and record.result:
        meta = record.result
        view["result"] = {"media_type": meta["media_type"], "width": meta["width"], "height": meta["height"],
                          "model": meta["model"], "backend": meta["backend"],
                          "precision": meta.get("precision") or None, "scale": meta["scale"],
                          "bytes": record.result_bytes, "cache": meta.get("cache"),
                          "inference_ms": meta["inference_ms"]}
    return view


@router.post("", status_code=202, openapi_extra=UPSCALE_BODY, summary="Start an upscaling job",
             responses={202: {"description": "accepted and stored durably: {id, status, links}; "
                                             "Location: /v1/jobs/{id}"}, **JOB_ERRORS})
async def create_job(request: Request, options: UpscaleOptions = Depends(upscale_params),
                     api_key: str | None = Depends(authorize), service: Service = Depends(get_service)) -> Response:
    settings = service.settings
    record = await service.create_job(lambda: read_image_body(request, settings.job_max_body_bytes,
                                                              settings.body_timeout_s), options, api_key)
    return JSONResponse({"id": record.id, "status": record.status, "links": links(record.id)}, status_code=202,
                        headers={"Location": f"/v1/jobs/{record.id}"})


@router.get("/{job_id}", summary="A job's status, progress and ETA", responses=JOB_ERRORS)
async def get_job(job_id: str = JobId, api_key: str | None = Depends(authorize),
                  service: Service = Depends(get_service)) -> dict:
    return job_view(await service.jobs.get(job_id, api_key))


@router.get("/{job_id}/result", response_class=Response, summary="A finished job's image",
            responses={200: RESULT_RESPONSE, 304: NOT_MODIFIED, **JOB_ERRORS})
async def get_result(request: Request, job_id: str = JobId, api_key: str | None = Depends(authorize),
                     service: Service = Depends(get_service)) -> Response:
    found = await service.jobs.result(job_id, api_key)
    return image_response(request, found.result, found.key, found.record.result.get("cache") == "hit")


@router.delete("/{job_id}", summary="Cancel a job (its tiles leave the queues)", responses=JOB_ERRORS)
async def cancel_job(job_id: str = JobId, api_key: str | None = Depends(authorize),
                     service: Service = Depends(get_service)) -> dict:
    return job_view(await service.jobs.cancel(job_id, api_key))
