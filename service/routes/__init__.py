"""The HTTP routes, one router per concern; ``app.create_app`` includes them."""
from .jobs import router as jobs_router
from .system import router as system_router
from .upscale import router as upscale_router
from .web import router as web_router

__all__ = ["jobs_router", "system_router", "upscale_router", "web_router"]
