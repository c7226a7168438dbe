"""Recipe name (``recipe:`` in a config) -> class. An explicit table; DASR and the GAN stage
import heavier pieces, so they are resolved lazily."""
from __future__ import annotations

import importlib

RECIPES = {
    "edsr": "pixel:PixelRecipe",
    "mdsr": "pixel:PixelRecipe",
    "esrgan_psnr": "pixel:PixelRecipe",
    "vdsr": "vdsr:VDSRRecipe",
    "esrgan_gan": "esrgan:ESRGANRecipe",
    "dasr": "dasr:DASRRecipe",
    "realesrnet": "realesrnet:RealESRNetRecipe",
}


def recipe_class(name: str):
    from ..config import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    module, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
