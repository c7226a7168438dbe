"""The web page at ``/``: static HTML, CSS and JavaScript shipped in the package (``service/web``),
no build step and nothing from other hosts. It uses the public API like any client."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

WEB = Path(__file__).resolve().parents[1] / "web"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidated by ETag: a new version shows at once

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(WEB / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/web/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no file {name!r}")
    return FileResponse(WEB / name, media_type=ASSETS[name], headers=NO_CACHE)
