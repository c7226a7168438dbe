"""Request bodies: raw image bytes or a multipart field ``image``, size-limited; client disconnects."""
from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from .errors import BadImage, BodyTimeout, Cancelled, InvalidParameter, TooLarge, UnsupportedMediaType

RAW_TYPES = ("application/octet-stream",)


def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def is_image_type(value: str) -> bool:
    return value.startswith("image/") or value in RAW_TYPES


async def read_limited(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` (Content-Length first) and with
    408 when it has not fully arrived after ``timeout_s`` (a client trickling its upload)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks, total = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise TooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise Cancelled() from None
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {timeout_s:g}s ({total} bytes received)") from None
    return b"".join(chunks)


async def read_image_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The image bytes of a raw (image/*) or multipart (field ``image``) body."""
    kind = media_type(request.headers.get("content-type"))
    if kind == "multipart/form-data":
        return await image_from_multipart(request, await read_limited(request, limit, timeout_s))
    if not is_image_type(kind):
        raise UnsupportedMediaType(f"Content-Type {kind or '(none)'} is not an image; send the image bytes with "
                                   "an image/* Content-Type, or multipart/form-data with a field 'image'")
    body = await read_limited(request, limit, timeout_s)
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
