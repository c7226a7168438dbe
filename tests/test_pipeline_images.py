"""Every image kind, as a real file, through ``srserve upscale``: mode, size, bit depth, alpha,
orientation and ICC profile checked in the written output.

The built-in ``bicubic`` model gives exactly computable expectations; a tiny EDSR checks the
model path (alpha through the network, tiles)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from pipeline_nets import tiny_repository
from srserve.cli import main
from srserve.models.resize import BicubicUpsample
from srserve.pipeline.imageio import (
    AnimatedImageError, ImageDecodeError, ImageTooLarge, probe, read_image, write_png16,
)

RNG = np.random.default_rng(7)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def smooth(h: int, w: int, c: int, max_value: int = 255) -> np.ndarray:
    """A smooth random image (bicubic overshoot stays small, so clamping rarely matters)."""
    small = RNG.random((h // 4 + 2, w // 4 + 2, c))
    big = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(h, w),
                                                     mode="bilinear", align_corners=False)[0].permute(1, 2, 0))
    dtype = np.uint16 if max_value > 255 else np.uint8
    return np.rint((0.1 + 0.8 * big) * max_value).astype(dtype)


def bicubic(pixels: np.ndarray, scale: int, max_value: int) -> np.ndarray:
    x = torch.from_numpy(pixels.astype(np.float32) / max_value).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = BicubicUpsample(scale)(x)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return np.rint(y * max_value).astype(np.int64)


def upscale(capsys, *args) -> tuple[int, str]:
    rc = main(["upscale", *map(str, args), "--quiet"])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repository(tmp_path_factory.mktemp("repo"), names=("edsr",))


def read_png16(path: Path) -> tuple[np.ndarray, dict]:
    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    return np.array([np.asarray(r) for r in rows], dtype=np.int64).reshape(h, w, info["planes"]), info


# --- 8-bit modes --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1), ("LA", 2), ("RGBA", 4)])
def test_8bit_modes_keep_mode_and_match_bicubic(tmp_path, capsys, mode, channels):
    pixels = smooth(20, 30, channels)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(tmp_path / "in.png")
    rc, err = upscale(capsys, tmp_path / "in.png", "-o", tmp_path / "out", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    out = Image.open(tmp_path / "out" / "in.png")
    assert out.mode == mode and out.size == (60, 40)
    got = np.asarray(out).astype(np.int64).reshape(40, 60, channels)
    # gray goes through the model as R=G=B and back through luma: bicubic of the gray values
    assert np.abs(got - bicubic(pixels, 2, 255)).max() <= 1


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_images_become_rgb_or_rgba(tmp_path, capsys, transparency):
    rgb = Image.fromarray(smooth(16, 16, 3), "RGB").quantize(16)
    if transparency:
        rgb.info["transparency"] = 0
    rgb.save(tmp_path / "p.png", **({"transparency": 0} if transparency else {}))
    assert Image.open(tmp_path / "p.png").mode == "P"
    rc, err = upscale(capsys, tmp_path / "p.png", "-o", tmp_path, "--model", "bicubic", "--scale", 3,
                      "--format", "webp")
    assert rc == 0, err
    out = Image.open(tmp_path / "p.webp")
    assert out.mode == ("RGBA" if transparency else "RGB") and out.size == (48, 48)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_becomes_rgb(tmp_path, capsys, suffix):
    cmyk = Image.fromarray(smooth(16, 24, 4), "CMYK")
    cmyk.save(tmp_path / f"c{suffix}")
    rc, err = upscale(capsys, tmp_path / f"c{suffix}", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    out = Image.open(tmp_path / "o" / "c.png")
    assert out.mode == "RGB" and out.size == (48, 32)
    expected = np.asarray(Image.open(tmp_path / f"c{suffix}").convert("RGB"))
    assert np.abs(np.asarray(out).astype(int) - bicubic(expected, 2, 255)).max() <= 1


def test_cmyk_with_a_profile_that_does_not_fit_falls_back(tmp_path):
    """An RGB profile inside a CMYK file cannot convert it: plain conversion, no profile kept."""
    buf = io.BytesIO()
    Image.fromarray(smooth(8, 8, 4), "CMYK").save(buf, "JPEG", icc_profile=SRGB)
    raster = read_image(buf.getvalue())
    assert raster.mode == "RGB" and raster.icc_profile is None


# --- 16-bit -------------------------------------------------------------------------------------

def test_16bit_gray_stays_16bit(tmp_path, capsys):
    pixels = smooth(18, 22, 1, 65535)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rc, err = upscale(capsys, tmp_path / "g16.png", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    got, info = read_png16(tmp_path / "o" / "g16.png")
    assert info["bitdepth"] == 16 and info["greyscale"] and not info["alpha"] and got.shape == (36, 44, 1)
    assert np.abs(got - bicubic(pixels, 2, 65535)).max() <= 1  # 16-bit precision, not 8-bit
    assert np.any(got % 257 != 0)


@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_rgb_png_stays_16bit(tmp_path, capsys, alpha):
    pixels = smooth(14, 20, 4 if alpha else 3, 65535)
    with open(tmp_path / "c16.png", "wb") as f:  # Pillow cannot write 16-bit RGB: pypng does
        png.Writer(20, 14, greyscale=False, alpha=alpha, bitdepth=16).write(f, pixels.reshape(14, -1).tolist())
    assert Image.open(tmp_path / "c16.png").mode in ("RGB", "RGBA")  # what Pillow alone would give: 8 bits
    rc, err = upscale(capsys, tmp_path / "c16.png", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2,
                      "--alpha", "bicubic")
    assert rc == 0, err
    got, info = read_png16(tmp_path / "o" / "c16.png")
    assert info["bitdepth"] == 16 and info["planes"] == pixels.shape[2] and got.shape[:2] == (28, 40)
    assert np.abs(got - bicubic(pixels, 2, 65535)).max() <= 1


def test_16bit_to_jpeg_is_rounded_to_8bit(tmp_path, capsys):
    Image.fromarray(smooth(16, 16, 1, 65535)[..., 0]).save(tmp_path / "g16.png")
    rc, err = upscale(capsys, tmp_path / "g16.png", "-o", tmp_path, "--model", "bicubic", "--scale", 2,
                      "--format", "jpeg", "--quality", 90)
    assert rc == 0, err
    out = Image.open(tmp_path / "g16.jpg")
    assert out.format == "JPEG" and out.mode == "L" and out.size == (32, 32)


def test_png16_writer_round_trips_every_layout():
    for channels in (1, 2, 3, 4):
        pixels = RNG.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
        raster = read_image(write_png16(pixels, SRGB))
        assert np.array_equal(raster.pixels, pixels) and raster.icc_profile == SRGB


# --- alpha --------------------------------------------------------------------------------------

def test_alpha_through_the_model_and_by_bicubic(tmp_path, capsys, repo):
    pixels = smooth(24, 24, 4)
    pixels[..., 3] = np.where(np.arange(24)[None, :] < 12, 40, 230)  # a hard alpha edge
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    outputs = {}
    for mode in ("model", "bicubic"):
        rc, err = upscale(capsys, tmp_path / "a.png", "-o", tmp_path / mode, "--model", "edsr", "--scale", 2,
                          "--repository", repo.root, "--alpha", mode, "--tile", 8)
        assert rc == 0, err
        out = Image.open(tmp_path / mode / "a.png")
        assert out.mode == "RGBA" and out.size == (48, 48)
        outputs[mode] = np.asarray(out)[..., 3].astype(int)
    assert np.abs(outputs["bicubic"] - bicubic(pixels[..., 3:], 2, 255)[..., 0]).max() <= 1
    assert np.abs(outputs["model"] - outputs["bicubic"]).max() > 1  # the network really ran on alpha


def test_jpeg_output_flattens_alpha_onto_white(tmp_path, capsys):
    pixels = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "t.png")
    rc, err = upscale(capsys, tmp_path / "t.png", "-o", tmp_path, "--model", "bicubic", "--scale", 2,
                      "--format", "jpeg")
    assert rc == 0, err
    out = Image.open(tmp_path / "t.jpg")
    assert out.mode == "RGB" and np.asarray(out).min() >= 250


# --- orientation and ICC ------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, capsys, orientation):
    pixels = smooth(12, 20, 3)
    img = Image.fromarray(pixels, "RGB")
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.png", exif=exif.tobytes())
    assert Image.open(tmp_path / "o.png").getexif()[0x0112] == orientation
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    rc, err = upscale(capsys, tmp_path / "o.png", "-o", tmp_path / "out", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    out = Image.open(tmp_path / "out" / "o.png")
    assert out.size == (2 * upright.shape[1], 2 * upright.shape[0])
    assert out.getexif().get(0x0112, 1) == 1
    assert np.abs(np.asarray(out).astype(int) - bicubic(upright, 2, 255)).max() <= 1


def test_exif_orientation_of_a_jpeg(tmp_path, capsys):
    img = Image.fromarray(smooth(16, 32, 3), "RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    rc, err = upscale(capsys, tmp_path / "photo.jpg", "-o", tmp_path, "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    assert Image.open(tmp_path / "photo.png").size == (32, 64)


@pytest.mark.parametrize("source,target", [("png", "png"), ("jpeg", "jpeg"), ("webp", "webp"), ("jpeg", "png")])
def test_icc_profile_is_carried(tmp_path, capsys, source, target):
    suffix = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
    Image.fromarray(smooth(16, 16, 3), "RGB").save(tmp_path / f"i{suffix[source]}", icc_profile=SRGB)
    rc, err = upscale(capsys, tmp_path / f"i{suffix[source]}", "-o", tmp_path / "o", "--model", "bicubic",
                      "--scale", 2, "--format", target)
    assert rc == 0, err
    assert Image.open(tmp_path / "o" / f"i{suffix[target]}").info.get("icc_profile") == SRGB


def test_icc_profile_is_carried_by_16bit_png(tmp_path, capsys):
    Image.fromarray(smooth(10, 10, 1, 65535)[..., 0]).save(tmp_path / "g.png", icc_profile=SRGB)
    rc, err = upscale(capsys, tmp_path / "g.png", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    assert Image.open(tmp_path / "o" / "g.png").info.get("icc_profile") == SRGB


# --- refusals -----------------------------------------------------------------------------------

def test_animated_images_are_refused(tmp_path, capsys):
    frames = [Image.fromarray(smooth(8, 8, 3), "RGB") for _ in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(AnimatedImageError):
        read_image(tmp_path / "anim.gif")
    rc, err = upscale(capsys, tmp_path / "anim.gif", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2)
    assert rc == 1 and "animated GIF images are not supported (3 frames)" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "anim.png").exists()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height but whose data is a few bytes (a bomb's shape)."""
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    body = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return bytes(data)


def test_pixel_limit_is_checked_from_the_header(tmp_path, capsys):
    bomb = _png_claiming(9000, 9000)  # 81 Mpx: over the default limit, data never decoded
    with pytest.raises(ImageTooLarge, match="limit"):
        probe(bomb)
    with pytest.raises(ImageTooLarge):
        read_image(bomb)
    with pytest.raises(ImageTooLarge):
        read_image(_png_claiming(60000, 60000))  # also past Pillow's own bomb error
    Image.fromarray(smooth(20, 20, 3), "RGB").save(tmp_path / "ok.png")
    rc, err = upscale(capsys, tmp_path / "ok.png", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2,
                      "--max-pixels", 399)
    assert rc == 1 and "400 pixels; the limit is 399" in err
    rc, err = upscale(capsys, tmp_path / "ok.png", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2,
                      "--max-pixels", 400)
    assert rc == 0, err


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_undecodable_files_give_one_line_errors(tmp_path, capsys, content):
    if content is None:  # a truncated PNG
        buf = io.BytesIO()
        Image.fromarray(smooth(64, 64, 3), "RGB").save(buf, "PNG")
        content = buf.getvalue()[:200]
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ImageDecodeError):
        read_image(tmp_path / "bad.png")
    rc, err = upscale(capsys, tmp_path / "bad.png", "-o", tmp_path / "o", "--model", "bicubic", "--scale", 2)
    assert rc == 1 and "cannot decode" in err and "Traceback" not in err
