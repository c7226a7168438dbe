"""The default models shipped in model_repository/ load, beat bicubic on Set5, and their cards
report what they really measure.

Every shipped model must clear a floor that any real trained model clears (random or broken
weights lose to bicubic), and the issue's targets (>= 3.0 dB over bicubic at x2, >= 2.0 dB at x4)
for models trained on bicubic LR; a model that misses them fails.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from conftest import BENCHMARK, NO_DATASETS, ROOT
from srserve.backends import TorchBackend
from srserve.evaluate import evaluate
from srserve.models.repository import Repository, sha256_file

SET5 = BENCHMARK / "Set5"
REPO = Repository(ROOT / "model_repository")
USES_ALL_THREADS = True  # full-size models: both cores
FLOOR_GAIN_DB = 1.0
TARGET_GAIN_DB = {2: 3.0, 4: 2.0}  # issue 6, Set5
needs_set5 = pytest.mark.skipif(not SET5.exists(), reason=NO_DATASETS)


def shipped() -> list[str]:
    return REPO.names()


def bicubic_trained() -> list[str]:
    """Models trained on bicubic LR; a ``trained_for: real-world`` model is held to its real-world
    target instead (tests/test_realworld_shipped.py), its clean figures reported, not targeted."""
    return [n for n in shipped() if REPO.get(n).trained_for == "bicubic"]


def test_the_default_models_are_shipped():
    assert {"edsr", "mdsr", "vdsr", "esrgan", "dasr"} <= set(shipped())


@pytest.mark.parametrize("name", shipped())
def test_shipped_model_files_match_model_json_and_run_every_scale(name):
    entry = REPO.get(name)
    for weights in entry.weights:
        assert sha256_file(entry.path / weights.file) == weights.sha256, f"{name}/{weights.file} changed"
    backend = TorchBackend(REPO.load(name))
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    for scale in entry.scales:
        out = backend.run(x, scale, backend.degradation(x, scale))
        assert out.shape == (1, 3, 12 * scale, 10 * scale) and bool(torch.isfinite(out).all()), (name, scale)


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
@pytest.mark.parametrize("name", bicubic_trained())
def test_shipped_model_meets_the_target_gain(name):
    for scale, target in TARGET_GAIN_DB.items():
        if scale in REPO.get(name).scales:
            r = set5(name, scale)
            assert r.psnr - r.bicubic_psnr >= target, f"{name} x{scale}: +{r.psnr - r.bicubic_psnr:.2f} dB < +{target}"


@needs_set5
@pytest.mark.parametrize("name", ["edsr", pytest.param("mdsr", marks=pytest.mark.xfail(
    strict=True, reason="MDSR (6001 GPU + 2371 CPU iterations shared between three scales) is 0.20-0.33 dB below VDSR's paper on Set5"))])
def test_shipped_model_beats_the_vdsr_paper(name):
    """Issue 6's stretch target for edsr and mdsr: VDSR's published Set5 PSNR at x2/x3/x4."""
    from srserve.models import get_spec

    for scale in (2, 3, 4):
        paper = get_spec("vdsr").paper.psnr[("Set5", scale)]
        r = set5(name, scale)
        assert r.psnr > paper, f"{name} x{scale}: {r.psnr:.2f} dB <= VDSR paper {paper}"
