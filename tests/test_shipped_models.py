"""The default models shipped in model_repository/ load, beat bicubic on Set5, and their cards
report what they really measure.

Every shipped model must clear a floor that any real trained model clears (random or broken
weights lose to bicubic), and the issue's targets (>= 3.0 dB over bicubic at x2, >= 2.0 dB at x4);
a model known to be short of its target is a strict xfail that names the shortfall, so the test
reports it and flags the day it is met.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from srserve.backends import TorchBackend
from srserve.evaluate import evaluate
from srserve.models.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
SET5 = ROOT.parent / "shared" / "datasets" / "benchmark" / "Set5"
REPO = Repository(ROOT / "model_repository")
FLOOR_GAIN_DB = 1.0
TARGET_GAIN_DB = {2: 3.0, 4: 2.0}  # issue 6, Set5
SHORT_OF_TARGET: dict[str, str] = {}  # name -> why it is short (a strict xfail until it meets the target)
needs_set5 = pytest.mark.skipif(not SET5.exists(), reason="needs ../shared/datasets/benchmark/Set5 (not in a user's clone)")


def shipped() -> list[str]:
    return REPO.names()


def test_the_default_models_are_shipped():
    assert {"edsr", "mdsr", "vdsr", "esrgan", "dasr"} <= set(shipped())


@pytest.mark.parametrize("name", shipped())
def test_shipped_model_loads_every_scale(name):
    model = REPO.load(name)
    for scale in model.scales:
        assert model.net(scale).scale == scale


@lru_cache(maxsize=None)
def set5(name: str, scale: int):
    return evaluate(TorchBackend(REPO.load(name, scales=[scale])), SET5, scale, progress=False)


@needs_set5
@pytest.mark.parametrize("name", shipped())
def test_shipped_model_beats_bicubic_and_matches_its_card(name):
    entry = REPO.get(name)
    card = {b["scale"]: b for b in entry.extra.get("benchmarks", []) if b["dataset"] == "Set5"}
    for scale in entry.scales:
        r = set5(name, scale)
        assert r.psnr - r.bicubic_psnr >= FLOOR_GAIN_DB, f"{name} x{scale}: {r.psnr:.2f} dB vs bicubic {r.bicubic_psnr:.2f} dB"
        assert scale in card, f"{name}: model.json has no Set5 x{scale} figure"
        assert card[scale]["psnr"] == pytest.approx(r.psnr, abs=0.01), f"{name} x{scale}: the card is stale"


@needs_set5
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=SHORT_OF_TARGET[n]))
                                  if n in SHORT_OF_TARGET else n for n in shipped()])
def test_shipped_model_meets_the_target_gain(name):
    for scale, target in TARGET_GAIN_DB.items():
        if scale in REPO.get(name).scales:
            r = set5(name, scale)
            assert r.psnr - r.bicubic_psnr >= target, f"{name} x{scale}: +{r.psnr - r.bicubic_psnr:.2f} dB < +{target}"


@needs_set5
@pytest.mark.parametrize("name", ["edsr", pytest.param("mdsr", marks=pytest.mark.xfail(
    strict=True, reason="MDSR (6000 GPU iterations shared between three scales) is 0.3-0.5 dB below VDSR's paper"))])
def test_shipped_model_beats_the_vdsr_paper(name):
    """Issue 6's stretch target for edsr and mdsr: VDSR's published Set5 PSNR at x2/x3/x4."""
    from srserve.models import get_spec

    for scale in (2, 3, 4):
        paper = get_spec("vdsr").paper.psnr[("Set5", scale)]
        r = set5(name, scale)
        assert r.psnr > paper, f"{name} x{scale}: {r.psnr:.2f} dB <= VDSR paper {paper}"
