"""``srserve upscale``: inputs (files, directories, globs, the IN OUT form), never overwriting
inputs, and any output size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline_nets import tiny_repository
from srserve.cli import main
from srserve.models.errors import SRError
from srserve.pipeline.image import choose_native_scale, resolve_output_size

RNG = np.random.default_rng(3)


def make_png(path, h=12, w=16, mode="RGB"):
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = (RNG.random((h, w, channels)) * 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


def upscale(capsys, *args, quiet=True) -> tuple[int, str]:
    rc = main(["upscale", *map(str, args), *(["--quiet"] if quiet else [])])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repository(tmp_path_factory.mktemp("repo"), names=("mdsr", "edsr"))


# --- never overwrite ------------------------------------------------------------------------------

def test_refuses_to_overwrite_an_input(tmp_path, capsys):
    src = make_png(tmp_path / "a.png")
    before = src.read_bytes()
    rc, err = upscale(capsys, src, "-o", tmp_path, "--model", "bicubic", "--scale", 2, "--overwrite")
    assert rc == 1 and "refusing to overwrite the input" in err
    rc, err = upscale(capsys, src, src, "--model", "bicubic", "--scale", 2, "--overwrite")
    assert rc == 1 and "refusing to overwrite the input" in err
    assert src.read_bytes() == before


def test_existing_outputs_need_overwrite(tmp_path, capsys):
    src = make_png(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"old")
    rc, err = upscale(capsys, src, "-o", tmp_path / "out", "--model", "bicubic", "--scale", 2)
    assert rc == 1 and "exists; use --overwrite" in err
    assert (tmp_path / "out" / "a.png").read_bytes() == b"old"
    rc, err = upscale(capsys, src, "-o", tmp_path / "out", "--model", "bicubic", "--scale", 2, "--overwrite")
    assert rc == 0, err
    assert Image.open(tmp_path / "out" / "a.png").size == (32, 24)


def test_two_inputs_writing_one_output_are_refused(tmp_path, capsys):
    make_png(tmp_path / "a.png")
    Image.open(tmp_path / "a.png").save(tmp_path / "a.jpg")
    rc, err = upscale(capsys, tmp_path / "a.png", tmp_path / "a.jpg", "-o", tmp_path / "o", "--model", "bicubic",
                      "--scale", 2)
    assert rc == 1 and "would both be written" in err
    assert not (tmp_path / "o").exists()


# --- inputs -------------------------------------------------------------------------------------

def test_directories_and_globs(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("x.png", "y.png", "z.jpg"):
        make_png(photos / name)
    (photos / "notes.txt").write_text("not an image")
    rc, err = upscale(capsys, photos, "-o", tmp_path / "all", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["x.png", "y.png", "z.png"]
    rc, err = upscale(capsys, str(photos / "*.png"), "-o", tmp_path / "globbed", "--model", "bicubic", "--scale", 2)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "globbed").iterdir()) == ["x.png", "y.png"]
    rc, err = upscale(capsys, str(photos / "*.bmp"), "-o", tmp_path / "none", "--model", "bicubic", "--scale", 2)
    assert rc == 1 and "no such file, directory or matching files" in err


def test_single_file_form(tmp_path, capsys):
    src = make_png(tmp_path / "in.png")
    rc, err = upscale(capsys, src, tmp_path / "out.jpg", "--model", "bicubic", "--scale", 3)
    assert rc == 0, err
    out = Image.open(tmp_path / "out.jpg")
    assert out.format == "JPEG" and out.size == (48, 36)
    rc, err = upscale(capsys, src, tmp_path / "out2.png", "--model", "bicubic", "--scale", 2, "--format", "webp")
    assert rc == 1 and "does not match" in err
    rc, err = upscale(capsys, src, "--model", "bicubic", "--scale", 2)
    assert rc == 1 and "-o OUTDIR" in err


def test_a_bad_file_does_not_stop_the_others(tmp_path, capsys):
    make_png(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    rc, err = upscale(capsys, tmp_path / "good.png", tmp_path / "bad.png", "-o", tmp_path / "o", "--model",
                      "bicubic", "--scale", 2, quiet=False)
    assert rc == 1 and "bad.png: cannot decode" in err and "1 of 2 images failed" in err
    assert (tmp_path / "o" / "good.png").is_file() and not (tmp_path / "o" / "bad.png").exists()


def test_progress_and_tiles_through_a_model(tmp_path, capsys, repo):
    make_png(tmp_path / "a.png", 30, 40)
    rc, err = upscale(capsys, tmp_path / "a.png", "-o", tmp_path / "o", "--model", "edsr", "--repository", repo.root,
                      "--tile", 12, "--tile-batch", 2, quiet=False)
    assert rc == 0, err
    assert "a.png ->" in err and Image.open(tmp_path / "o" / "a.png").size == (80, 60)


# --- any output size ------------------------------------------------------------------------------

def test_native_scale_is_the_smallest_at_least_the_request():
    assert choose_native_scale([2, 3, 4], 1.5) == 2
    assert choose_native_scale([2, 3, 4], 2.0) == 2
    assert choose_native_scale([2, 3, 4], 2.01) == 3
    assert choose_native_scale([4], 1.2) == 4
    with pytest.raises(SRError, match="above the largest native scale"):
        choose_native_scale([2, 3, 4], 4.5)


@pytest.mark.parametrize("request_,expected", [
    ({"outscale": 1.5}, (2, 15, 24)),
    ({"outscale": 2.5}, (3, 25, 40)),
    ({"out_width": 50}, (4, 31, 50)),
    ({"out_height": 30}, (3, 30, 48)),
    ({"out_width": 20, "out_height": 40}, (4, 40, 20)),
    ({"scale": 4, "outscale": 3}, (4, 30, 48)),
    ({"scale": 3}, (3, 30, 48)),
])
def test_output_size_requests(request_, expected):
    size = resolve_output_size(10, 16, [2, 3, 4], **request_)
    assert (size.scale, size.height, size.width) == expected


@pytest.mark.parametrize("request_,message", [
    ({}, "choose a scale"),
    ({"outscale": 5}, "above the largest"),
    ({"scale": 2, "outscale": 3}, "larger than x2"),
    ({"outscale": 2, "out_width": 4}, "not both"),
    ({"scale": 8}, "serves scales"),
])
def test_bad_size_requests(request_, message):
    with pytest.raises(SRError, match=message):
        resolve_output_size(10, 16, [2, 3, 4], **request_)


def test_any_scale_through_the_cli_picks_the_mdsr_head(tmp_path, capsys, repo):
    make_png(tmp_path / "m.png", 20, 30)
    rc, err = upscale(capsys, tmp_path / "m.png", "-o", tmp_path / "o", "--model", "mdsr", "--repository", repo.root,
                      "--outscale", 2.5, quiet=False)
    assert rc == 0, err
    assert "(x3 -> 75×50 (x2.5))" in err
    assert Image.open(tmp_path / "o" / "m.png").size == (75, 50)
    rc, err = upscale(capsys, tmp_path / "m.png", "-o", tmp_path / "w", "--model", "mdsr", "--repository", repo.root,
                      "--width", 100)
    assert rc == 0, err
    assert Image.open(tmp_path / "w" / "m.png").size == (100, 67)
    rc, err = upscale(capsys, tmp_path / "m.png", "-o", tmp_path / "x", "--model", "mdsr", "--repository", repo.root,
                      "--outscale", 6)
    assert rc == 1 and "above the largest native scale x4" in err
    rc, err = upscale(capsys, tmp_path / "m.png", "-o", tmp_path / "x", "--model", "mdsr", "--repository", repo.root,
                      "--scale", 5)
    assert rc == 1 and "serves scales [2, 3, 4], not x5" in err and "Traceback" not in err


def test_downscale_is_antialiased_high_quality(tmp_path, capsys):
    """x2 bicubic then the exact-size Lanczos back to x1 nearly returns the input (a naive
    subsampling or an aliasing filter would not)."""
    x = np.asarray(Image.open(make_png(tmp_path / "s.png", 40, 40, "L")).resize((40, 40)))
    smooth = np.asarray(Image.fromarray(x).resize((20, 20), Image.Resampling.BOX).resize((40, 40),
                                                                                        Image.Resampling.BICUBIC))
    Image.fromarray(smooth).save(tmp_path / "smooth.png")
    rc, err = upscale(capsys, tmp_path / "smooth.png", "-o", tmp_path / "o", "--model", "bicubic", "--outscale", 1)
    assert rc == 0, err
    back = np.asarray(Image.open(tmp_path / "o" / "smooth.png")).astype(float)
    mse = np.mean((back - smooth.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
