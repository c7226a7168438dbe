"""HTTP errors: every failure becomes ``{"error": CODE, "detail": MESSAGE}`` with one status.

``ServiceError`` subclasses carry their status and code; the pipeline's user-facing errors
(``SRError`` subclasses) are mapped in ``classify``. Anything else is a server bug: 500, logged
with its traceback, never shown to the client.
"""
from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from srserve.models.errors import SRError
from srserve.models.repository import RepositoryError
from srserve.pipeline import OutOfMemory
from srserve.pipeline.image import ScaleError
from srserve.pipeline.imageio import ImageDecodeError, ImageTooLarge


class ServiceError(SRError):
    status = 400
    code = "bad_request"
    headers: dict[str, str] = {}

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        if headers:
            self.headers = headers


class BadImage(ServiceError):
    status, code = 400, "bad_image"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class UnknownModel(ServiceError):
    status, code = 404, "unknown_model"


class TooLarge(ServiceError):
    status, code = 413, "too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Unavailable(ServiceError):
    """503 with Retry-After: overloaded, draining, still loading, or out of memory."""

    status = 503

    def __init__(self, code: str, detail: str, retry_after: int = 1):
        super().__init__(detail, headers={"Retry-After": str(int(retry_after))})
        self.code = code


class DeadlineExceeded(ServiceError):
    status, code = 504, "timeout"


class BodyTimeout(ServiceError):
    status, code = 408, "body_timeout"


class Cancelled(Exception):
    """The client went away or the request was dropped; nothing is sent back."""


def classify(exc: BaseException) -> ServiceError | None:
    """The HTTP error for a user-facing exception, or None for a server bug."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return TooLarge(str(exc))
    if isinstance(exc, ImageDecodeError):
        return BadImage(str(exc))
    if isinstance(exc, (ScaleError, RepositoryError)):
        return InvalidParameter(str(exc))
    if isinstance(exc, OutOfMemory):
        return Unavailable("out_of_memory", str(exc), retry_after=5)
    if isinstance(exc, SRError):
        return InvalidParameter(str(exc))
    return None


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def service_error_response(err: ServiceError) -> JSONResponse:
    return error_response(err.status, err.code, err.detail, dict(err.headers) or None)


class ErrorBody(BaseModel):
    error: str
    detail: str


ERROR_RESPONSES = {status: {"model": ErrorBody, "description": text} for status, text in {
    400: "undecodable or corrupt image", 401: "API key missing or wrong", 404: "unknown model",
    408: "the body did not arrive within SR_BODY_TIMEOUT_S",
    413: "body, input or output pixel count over the limits", 415: "not an image media type",
    422: "invalid parameter (e.g. a scale the model lacks)",
    503: "queue full, draining, or still starting (Retry-After)", 504: "request deadline passed"}.items()}
