"""The HTTP routes, one router per concern; ``app.create_app`` includes them."""
from .system import router as system_router
from .upscale import router as upscale_router

__all__ = ["system_router", "upscale_router"]
