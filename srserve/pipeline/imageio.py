"""Reading and writing images as people have them (Pillow, plus pypng for 16-bit colour PNG).

Every decoded image becomes a ``Raster``: an H×W×C uint8 or uint16 array with C = 1 (gray),
2 (gray + alpha), 3 (RGB) or 4 (RGBA), plus the ICC profile. What each input becomes:

* RGB, RGBA, L, LA stay as they are; bilevel ("1") becomes L; P (palette) becomes RGBA when it
  has transparency, else RGB; CMYK becomes RGB (through its ICC profile with LittleCMS when it
  has one, then tagged sRGB; Pillow's plain conversion otherwise); other modes become RGB.
* 16-bit: grayscale (I;16, or I holding 0..65535) stays 16-bit; 16-bit PNGs of every colour
  type are decoded with pypng because Pillow silently reduces 16-bit RGB(A) PNG to 8 bits.
  16-bit rasters are written as 16-bit PNG by ``write_png16`` (Pillow cannot write 16-bit RGB);
  JPEG and WebP are 8-bit formats, so 16-bit results are rounded to 8 bits there.
* EXIF orientation is applied to the pixels (the output needs no orientation tag); the ICC
  profile is carried to the output; other metadata is not copied.
* Animated images (GIF, APNG, WebP with more than one frame) are refused with a clear error
  rather than silently reduced to their first frame.
* The pixel count is checked against ``max_pixels`` from the header, before any decoding
  (decompression-bomb guard), and raises ``ImageTooLarge`` (the server answers 413).

Undecodable input raises ``ImageDecodeError`` (400). Output: PNG (default), JPEG, WebP with a
quality; JPEG has no alpha, so an image with alpha is composited onto white there.
"""
from __future__ import annotations

import io
import logging
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from srserve.models.errors import SRError

log = logging.getLogger("srserve.pipeline")

DEFAULT_MAX_PIXELS = 8192 * 8192
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 90}

# our own pixel limit replaces Pillow's warning; Pillow's hard error is mapped to ImageTooLarge
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF orientation -> numpy ops on an H×W×C array (the same as PIL.ImageOps.exif_transpose)
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}
EXIF_ORIENTATION = 0x0112


class ImageDecodeError(SRError):
    """The input is not an image we can decode (the server answers 400)."""


class AnimatedImageError(ImageDecodeError):
    """Animated inputs are refused rather than reduced to their first frame."""


class ImageTooLarge(SRError):
    """More pixels than the configured limit, found from the header (the server answers 413)."""


@dataclass
class Raster:
    """H×W×C pixels (uint8 or uint16), C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA."""

    pixels: np.ndarray
    icc_profile: bytes | None = None
    source_format: str | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def max_value(self) -> int:
        return 65535 if self.bit_depth == 16 else 255

    @property
    def gray(self) -> bool:
        return self.channels in (1, 2)

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def color(self) -> np.ndarray:
        return self.pixels[..., : 1 if self.gray else 3]

    @property
    def alpha(self) -> np.ndarray | None:
        return self.pixels[..., -1:] if self.has_alpha else None

    @property
    def mode(self) -> str:
        """Pillow-style description of the pixels (16-bit colour has no Pillow mode)."""
        base = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[self.channels]
        return base if self.bit_depth == 8 else f"{base};16"


# --- reading ------------------------------------------------------------------------------------

def _open(source, max_pixels: int | None = None) -> tuple[Image.Image, bytes]:
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    try:
        return Image.open(io.BytesIO(data)), data
    except Image.DecompressionBombError:  # Pillow's own ceiling (~179 Mpx), far above any configured limit
        limit = f"the limit is {max_pixels} pixels" if max_pixels else "too many pixels to decode"
        raise ImageTooLarge(f"image too large: {limit}") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image: {_reason(exc)}") from None


OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def _reason(exc: BaseException) -> str:
    """The first line of a decoder's message, without object reprs (``<_io.BytesIO object at 0x…>``)."""
    text = OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__
    if text == "cannot identify image file":
        return "not a recognised image format (PNG, JPEG, WebP, BMP, TIFF, GIF)"
    return text.splitlines()[0][:200]


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}")


def probe(source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """(width, height, format) of the decoded image (EXIF rotation applied) from the header only,
    with the pixel limit checked."""
    img, _ = _open(source, max_pixels)
    check_pixels(*img.size, max_pixels)
    try:
        transposed = img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError, struct.error, EOFError):
        transposed = False
    width, height = (img.height, img.width) if transposed else (img.width, img.height)
    return width, height, img.format or "unknown"


def read_image(source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Raster:
    """Decodes a file path or bytes into a ``Raster`` (see the module docstring)."""
    img, data = _open(source, max_pixels)
    check_pixels(*img.size, max_pixels)
    if getattr(img, "is_animated", False):
        raise AnimatedImageError(f"animated {img.format} images are not supported ({img.n_frames} frames); "
                                 "extract a frame first")
    icc = img.info.get("icc_profile") or None
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        if _is_png16(img, data):
            pixels = _decode_png16(data)
        else:
            img.load()
            pixels, icc = _pixels_of(img, icc)
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error, IndexError) as exc:
        raise ImageDecodeError(f"cannot decode {img.format or 'image'}: {_reason(exc)}") from None
    pixels = np.ascontiguousarray(_ORIENT.get(orientation, lambda a: a)(pixels))
    return Raster(pixels, icc, img.format)


def _is_png16(img: Image.Image, data: bytes) -> bool:
    return img.format == "PNG" and len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16


def _decode_png16(data: bytes) -> np.ndarray:
    import png  # pypng

    try:
        width, height, rows, info = png.Reader(bytes=data).asDirect()
        planes = info["planes"]
        pixels = np.array([np.asarray(r, dtype=np.uint16) for r in rows], dtype=np.uint16)
    except png.Error as exc:
        raise ImageDecodeError(f"cannot decode PNG: {_reason(exc)}") from None
    if info["bitdepth"] != 16:  # asDirect rescales sBIT; keep 16-bit semantics
        pixels = (pixels.astype(np.uint32) * 65535 // (2 ** info["bitdepth"] - 1)).astype(np.uint16)
    return pixels.reshape(height, width, planes)


def _pixels_of(img: Image.Image, icc: bytes | None) -> tuple[np.ndarray, bytes | None]:
    """Pixels of a loaded Pillow image in one of our layouts (and the ICC profile that applies)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)[..., None], icc
    if mode == "I":
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)[..., None], icc
    if mode == "F":
        raise ImageDecodeError("32-bit floating-point images are not supported")
    if mode == "CMYK":
        return _cmyk_to_rgb(img, icc)
    if mode == "1":
        img = img.convert("L")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    elif mode in ("La",):
        img = img.convert("LA")
    elif mode in ("RGBa",):
        img = img.convert("RGBA")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")
    pixels = np.asarray(img)
    return (pixels[..., None] if pixels.ndim == 2 else pixels), icc


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> tuple[np.ndarray, bytes | None]:
    if icc:
        try:
            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, outputMode="RGB")
            return np.asarray(rgb), ImageCms.ImageCmsProfile(srgb).tobytes()
        except (ImageCms.PyCMSError, OSError):
            log.warning("CMYK image has an unusable ICC profile; converting without it")
    return np.asarray(img.convert("RGB")), None


# --- writing ------------------------------------------------------------------------------------

def output_format(name: str) -> str:
    try:
        return FORMATS[name.lower().lstrip(".")]
    except KeyError:
        raise SRError(f"unsupported output format {name!r}; choose png, jpeg or webp") from None


def encode_image(raster: Raster, fmt: str = "png", quality: int | None = None) -> bytes:
    """The raster as PNG (16-bit kept), JPEG or WebP bytes, with its ICC profile."""
    fmt = output_format(fmt)
    if fmt == "PNG" and raster.bit_depth == 16:
        return write_png16(raster.pixels, raster.icc_profile)
    pixels = to_8bit(raster.pixels)
    if raster.bit_depth == 16:
        log.warning("%s is an 8-bit format: the 16-bit result is rounded to 8 bits", fmt)
    if fmt == "JPEG" and raster.has_alpha:
        pixels = _flatten_on_white(pixels)
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                          {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]])
    options: dict = {}
    if raster.icc_profile:
        options["icc_profile"] = raster.icc_profile
    if fmt in DEFAULT_QUALITY:
        options["quality"] = int(quality if quality is not None else DEFAULT_QUALITY[fmt])
    if fmt == "PNG":
        options["compress_level"] = 6
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def save_image(raster: Raster, path: str | Path, fmt: str | None = None, quality: int | None = None) -> None:
    """Writes atomically (temporary file, then rename): an interrupted run leaves no half file."""
    path = Path(path)
    data = encode_image(raster, fmt or path.suffix or "png", quality)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _flatten_on_white(pixels: np.ndarray) -> np.ndarray:
    alpha = pixels[..., -1:].astype(np.float32) / 255
    color = pixels[..., :-1].astype(np.float32)
    return np.rint(color * alpha + 255 * (1 - alpha)).astype(np.uint8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _paeth_filter(raw: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter type 4 over H×rowbytes uint8 (encoding is vectorisable: it reads raw bytes)."""
    raw16 = raw.astype(np.int16)
    a = np.zeros_like(raw16)
    a[:, bpp:] = raw16[:, :-bpp]
    b = np.zeros_like(raw16)
    b[1:] = raw16[:-1]
    c = np.zeros_like(raw16)
    c[1:, bpp:] = raw16[:-1, :-bpp]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((raw16 - pred) & 0xFF).astype(np.uint8)


def write_png16(pixels: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB, RGBA) from H×W×C uint16, written directly."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2)
    filtered = np.concatenate([np.full((height, 1), 4, np.uint8), _paeth_filter(raw, 2 * channels)], axis=1)
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))]
    if icc_profile:
        out.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    compressed = zlib.compress(filtered.tobytes(), 6)
    step = 1 << 24
    out += [_chunk(b"IDAT", compressed[i:i + step]) for i in range(0, len(compressed), step)]
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)
