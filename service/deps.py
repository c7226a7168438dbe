"""FastAPI dependencies: the service, API-key authentication and the /upscale query parameters.

Tests replace any of them with ``app.dependency_overrides``.
"""
from __future__ import annotations

import hmac
from typing import Literal

from fastapi import Query, Request
from .domain import Service
from .engine import UpscaleOptions
from .errors import InvalidParameter, Unauthorized


def no_repeated_parameters(request: Request) -> None:
    """422 for a query parameter given twice (``?scale=2&scale=4``) instead of silently taking one."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise InvalidParameter(f"query parameter {shorten(key)!r} is given more than once")
        seen.add(key)


def shorten(text: str, limit: int = 64) -> str:
    """User input quoted in an error, cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def get_service(request: Request) -> Service:
    return request.app.state.service


def api_key(request: Request) -> str | None:
    """The key a request carries (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if key is None and auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
    return key or None


def authorize(request: Request) -> str | None:
    """401 unless API keys are off or the request carries one of them; returns the key."""
    keys = get_service(request).settings.api_keys
    if not keys:
        return None
    key = api_key(request)
    if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")
    return key


def upscale_params(
    model: str | None = Query(None, max_length=64, description="model name (default from config)"),
    scale: int | None = Query(None, ge=1, le=16, description="native scale (default from config)"),
    outscale: float | None = Query(None, gt=0, le=16, description="any output scale: the smallest native scale "
                                   ">= it runs, then an antialiased LANCZOS resize"),
    self_ensemble: bool = Query(False, description="geometric self-ensemble x8 (8x the compute)"),
    format: Literal["png", "jpeg", "jpg", "webp"] = Query("png", description="output format"),
    quality: int | None = Query(None, ge=1, le=100, description="JPEG/WebP quality (default 95/90)"),
) -> UpscaleOptions:
    return UpscaleOptions(model=model, scale=scale, outscale=outscale, self_ensemble=self_ensemble, format=format,
                          quality=quality)
