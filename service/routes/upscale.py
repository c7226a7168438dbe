"""``POST /upscale``: an image in, the upscaled image back."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..bodies import read_image_body, watch_disconnect
from ..deps import authorize, get_service, upscale_params
from ..domain import CLIENT_CLOSED, Service
from ..engine import UpscaleOptions, Upscaled
from ..errors import ERROR_RESPONSES, Cancelled, ServiceError, service_error_response

RESULT_HEADERS = {"X-Model": "the model that ran", "X-Scale": "the native scale that ran",
                  "X-Backend": "the engine that ran (torch, onnxruntime, openvino, tensorrt, ...)",
                  "X-Inference-Ms": "this request's share of the backend time, in ms",
                  "X-Output-Size": "WIDTHxHEIGHT of the returned image"}
RESULT_RESPONSE = {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
                   "description": "the upscaled image",
                   "headers": {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in RESULT_HEADERS.items()}}

UPSCALE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
}}}

router = APIRouter(dependencies=[Depends(authorize)])


def result_headers(result: Upscaled) -> dict[str, str]:
    return {"X-Model": result.model, "X-Scale": str(result.scale), "X-Backend": result.backend,
            "X-Inference-Ms": f"{result.inference_ms:.1f}", "X-Output-Size": f"{result.width}x{result.height}"}


@router.post("/upscale", openapi_extra=UPSCALE_BODY, response_class=Response, summary="Upscale an image",
             responses={200: RESULT_RESPONSE, **ERROR_RESPONSES})
async def upscale(request: Request, options: UpscaleOptions = Depends(upscale_params),
                  service: Service = Depends(get_service)) -> Response:
    try:
        settings = service.settings
        result = await service.upscale(lambda: read_image_body(request, settings.max_body_bytes, settings.body_timeout_s),
                                       options, watch=lambda work: watch_disconnect(request, work))
    except Cancelled:
        return Response(status_code=CLIENT_CLOSED)
    except ServiceError as err:  # recorded by the service already
        return service_error_response(err)
    return Response(result.data, media_type=result.media_type, headers=result_headers(result))
