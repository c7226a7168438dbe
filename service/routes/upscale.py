"""``POST /upscale``: an image in, the upscaled image back."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..bodies import read_image_body, watch_disconnect
from ..cache import etag, etag_matches
from ..deps import authorize, get_service, upscale_params
from ..domain import CLIENT_CLOSED, Service
from ..engine import UpscaleOptions, Upscaled
from ..errors import ERROR_RESPONSES, Cancelled, ServiceError, service_error_response

RESULT_HEADERS = {"X-Model": "the model that ran", "X-Scale": "the native scale that ran",
                  "X-Backend": "the engine that ran (torch, onnxruntime, openvino, tensorrt, ...)",
                  "X-Precision": "the engine's precision (fp32, bf16, fp16)",
                  "X-Inference-Ms": "this request's share of the backend time, in ms",
                  "X-Output-Size": "WIDTHxHEIGHT of the returned image",
                  "X-Cache": "hit (answered from the result cache, nothing run) or miss",
                  "ETag": "the result's identity (input, parameters, weights, engine): send it as If-None-Match"}
RESULT_RESPONSE = {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
                   "description": "the upscaled image",
                   "headers": {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in RESULT_HEADERS.items()}}
NOT_MODIFIED = {"description": "If-None-Match names this result's ETag: nothing run or sent",
                "headers": {name: RESULT_RESPONSE["headers"][name] for name in ("ETag", "X-Cache")}}

UPSCALE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
}}}

router = APIRouter(dependencies=[Depends(authorize)])


def result_headers(result: Upscaled, key: str, cache_hit: bool) -> dict[str, str]:
    return {"X-Model": result.model, "X-Scale": str(result.scale), "X-Backend": result.backend,
            "X-Precision": result.precision or "unknown", "X-Inference-Ms": f"{result.inference_ms:.1f}",
            "X-Output-Size": f"{result.width}x{result.height}",
            "X-Cache": "hit" if cache_hit else "miss", "ETag": etag(key)}


def image_response(request: Request, result: Upscaled | None, key: str, cache_hit: bool) -> Response:
    """The image with its headers, or 304 when ``If-None-Match`` names its ETag (``result`` None:
    the domain skipped the work because the client holds it)."""
    if result is None or etag_matches(request.headers.get("if-none-match"), etag(key)):
        return Response(status_code=304, headers={"ETag": etag(key), "X-Cache": "hit"})
    return Response(result.data, media_type=result.media_type, headers=result_headers(result, key, cache_hit))


def client_holds(request: Request):
    """``holds(key)`` for the domain: the request's If-None-Match names this result."""
    return lambda key: etag_matches(request.headers.get("if-none-match"), etag(key))


@router.post("/upscale", openapi_extra=UPSCALE_BODY, response_class=Response, summary="Upscale an image",
             responses={200: RESULT_RESPONSE, 304: NOT_MODIFIED, **ERROR_RESPONSES})
async def upscale(request: Request, options: UpscaleOptions = Depends(upscale_params),
                  service: Service = Depends(get_service)) -> Response:
    try:
        settings = service.settings
        served = await service.upscale(lambda: read_image_body(request, settings.max_body_bytes, settings.body_timeout_s),
                                       options, watch=lambda work: watch_disconnect(request, work),
                                       holds=client_holds(request))
    except Cancelled:
        return Response(status_code=CLIENT_CLOSED)
    except ServiceError as err:  # recorded by the service already
        return service_error_response(err)
    return image_response(request, served.result, served.key, served.cache_hit)
