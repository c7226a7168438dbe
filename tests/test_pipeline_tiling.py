"""Tiling: plan geometry, stitching, and tiled == untiled for every architecture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_nets import TINY, backend_of, lr_image, scale_of, tiny_repository, to8
from srserve.models.repository import Repository
from srserve.pipeline import upscale_tensor
from srserve.pipeline.tiling import (
    MAX_EXACT_MARGIN, Stitcher, default_tiling, extract_tiles, plan_tiles, tile_alignment,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repository(tmp_path_factory.mktemp("repo"))


# --- geometry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,tile,margin,align,feather", [
    (37, 50, 8, 3, 1, 0), (37, 50, 16, 5, 2, 2), (101, 64, 24, 8, 4, 4), (10, 300, 32, 6, 1, 3),
    (64, 64, 0, 4, 1, 0), (5, 7, 4, 2, 1, 1),
])
def test_plan_geometry(h, w, tile, margin, align, feather):
    plan = plan_tiles(h, w, 3, tile, margin, feather=feather, align=align)
    ph, pw = plan.padded_height, plan.padded_width
    assert ph % align == 0 and pw % align == 0 and ph - h < align and pw - w < align
    owned = np.zeros((ph, pw), np.int32)
    for t in plan.tiles:
        assert (t.window.height, t.window.width) == plan.tile_shape  # one shape for the whole plan
        assert 0 <= t.window.top and t.window.bottom <= ph and 0 <= t.window.left and t.window.right <= pw
        assert all(v % align == 0 for v in (*t.window, *t.core))
        # context: every written pixel keeps the margin (clipped only at the true image border)
        m = plan.margin
        assert t.window.top <= max(0, t.region.top - m) and t.window.bottom >= min(ph, t.region.bottom + m)
        assert t.window.left <= max(0, t.region.left - m) and t.window.right >= min(pw, t.region.right + m)
        assert t.core.height <= plan.tile_size or tile == 0
        # the output region stays inside the window
        assert t.window.top <= t.region.top and t.region.bottom <= t.window.bottom
        owned[t.core.top:t.core.bottom, t.core.left:t.core.right] += 1
    assert (owned == 1).all()  # cores partition the image


def test_large_images_share_one_tile_shape():
    a = plan_tiles(300, 500, 4, 64, 12)
    b = plan_tiles(211, 1000, 4, 64, 12)
    assert a.tile_shape == b.tile_shape == (88, 88)


@pytest.mark.parametrize("feather", [0, 1, 3])
def test_blend_weights_sum_to_one(feather):
    plan = plan_tiles(45, 61, 2, 12, 4, feather=feather)
    assert plan.feather == feather
    st = Stitcher(plan)
    st.add(plan.tiles, torch.ones(len(plan), 3, *plan.out_tile_shape))
    np.testing.assert_allclose(st.result().numpy(), 1.0, atol=1e-6)


def test_stitcher_refuses_partial_and_wrong_outputs():
    plan = plan_tiles(40, 40, 2, 16, 4)
    st = Stitcher(plan)
    st.add(plan.tiles[:-1], torch.zeros(len(plan) - 1, 3, *plan.out_tile_shape))
    with pytest.raises(RuntimeError, match="never added"):
        st.result()
    with pytest.raises(ValueError, match="do not match"):
        st.add(plan.tiles[-1:], torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="twice"):
        st.add(plan.tiles[:1], torch.zeros(1, 3, *plan.out_tile_shape))


def test_extract_reflects_alignment_padding_like_the_network():
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 1, 5, 7)
    plan = plan_tiles(5, 7, 2, 0, 0, align=4)
    (window,) = extract_tiles(x, plan)
    expected = torch.nn.functional.pad(x, (0, 1, 0, 3), mode="reflect")[0]
    assert torch.equal(window, expected)


@pytest.mark.parametrize("name", ["edsr", "mdsr", "vdsr", "dasr", "rrdb2", "rrdb1"])
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 7)])
def test_tiny_images(repo, name, h, w):
    """Images smaller than any tile (and than RRDBNet x1's 4-pixel unshuffle) still work."""
    backend = backend_of(repo, name)
    s = scale_of(name)
    x = torch.rand(1, 3, h, w)
    for tile in (0, 2, None):
        assert upscale_tensor(backend, x, s, tile=tile).shape == (1, 3, h * s, w * s)


def test_defaults_follow_the_receptive_radius(repo):
    for name in TINY:
        model = repo.load(name)
        s = scale_of(name)
        cfg = default_tiling(model, s)
        radius = model.receptive_radius(s)
        assert cfg.align == tile_alignment(model, s)
        assert cfg.exact_margin >= radius and cfg.tile_size % cfg.align == 0
        if cfg.exact_margin <= MAX_EXACT_MARGIN:
            assert (cfg.margin, cfg.feather) == (cfg.exact_margin, 0)  # crop-stitch, exact
        else:
            assert cfg.margin < cfg.exact_margin and 0 < cfg.feather <= cfg.margin  # blend
    assert default_tiling(repo.load("rrdbdeep"), 4).mode == "blend"
    assert default_tiling(repo.load("rrdbdeep"), 4, exact=True).mode == "crop"


# --- tiled == untiled ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TINY))
def test_exact_tiling_reproduces_untiled(repo, name):
    """Margin ≥ receptive radius + crop-stitch: equal up to float rounding, on an odd-sized crop
    (exercises RRDBNet x2/x1 alignment padding and border tiles)."""
    backend = backend_of(repo, name)
    s = scale_of(name)
    x = lr_image("Set5/x2/LR/img_001.png", crop=(67, 83) if name != "rrdbdeep" else (41, 45))
    untiled = upscale_tensor(backend, x, s, tile=0)
    tiled = upscale_tensor(backend, x, s, tile=12, exact=True, batch_size=3)
    assert tiled.shape == untiled.shape == (1, 3, x.shape[2] * s, x.shape[3] * s)
    assert (tiled - untiled).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("image", ["Set5/x2/LR/img_002.png", "Set14/x2/LR/img_005.png"])
def test_default_tiling_within_one_level(repo, name, image):
    """At the default margin/feather, tiled output equals untiled within ±1 in 8 bits."""
    backend = backend_of(repo, name)
    s = scale_of(name)
    x = lr_image(image, crop=(72, 90) if s < 4 else (56, 64))
    cfg = default_tiling(backend, s)
    tile = 16 if cfg.margin < 24 else 24  # several tiles even for these small crops
    untiled = to8(upscale_tensor(backend, x, s, tile=0))
    tiled = to8(upscale_tensor(backend, x, s, tile=tile))
    assert np.abs(tiled - untiled).max() <= 1
    saturated = np.mean((untiled == 0) | (untiled == 255))
    assert saturated < 0.2, "the net saturates: the comparison would be trivial"


def test_blending_smooths_seams_at_a_short_margin(repo):
    """Below the receptive radius crop-stitch leaves a step in the error at each seam; feathering
    spreads it over 2·feather pixels, so the error image has no jump."""
    backend = backend_of(repo, "rrdbdeep")
    x = lr_image("Set5/x2/LR/img_002.png", crop=(48, 48))
    untiled = upscale_tensor(backend, x, 4, tile=0)

    def steepest_step(tiled):
        err = tiled - untiled
        return max(err.diff(dim=-1).abs().max().item(), err.diff(dim=-2).abs().max().item())

    crop = upscale_tensor(backend, x, 4, tile=16, margin=4, feather=0)
    blend = upscale_tensor(backend, x, 4, tile=16, margin=4, feather=4)
    assert (crop - untiled).abs().max() > 1e-4  # the margin is really too short
    assert steepest_step(blend) < 0.5 * steepest_step(crop)


def test_trained_models_tile_within_one_level():
    """The shipped models (model_repository/ of this checkout, whatever the working directory)."""
    repo = Repository(Path(__file__).resolve().parents[1] / "model_repository")
    names = [n for n in repo.names() if n in ("edsr", "mdsr", "vdsr", "esrgan", "dasr")]
    assert names, f"no shipped models in {repo.root}"
    x = lr_image("Set14/x2/LR/img_005.png", crop=(96, 96))
    for name in names:
        backend = backend_of(repo, name)
        s = max(backend.model.scales)
        untiled = to8(upscale_tensor(backend, x, s, tile=0))
        tiled = to8(upscale_tensor(backend, x, s, tile=32))
        assert np.abs(tiled - untiled).max() <= 1, name
