"""The default models shipped in model_repository/ load and beat bicubic on Set5.

Targets (issue 6): every shipped default beats bicubic by >= 3.0 dB at x2 and >= 2.0 dB at x4.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from srserve.backend import TorchBackend
from srserve.evaluate import evaluate
from srserve.models.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
SET5 = ROOT.parent / "shared" / "datasets" / "benchmark" / "Set5"
REPO = Repository(ROOT / "model_repository")
TARGET_GAIN = {2: 3.0, 4: 2.0}


def shipped() -> list[str]:
    return REPO.names()


def test_shipped_models_load():
    for name in shipped():
        model = REPO.load(name)
        for scale in model.scales:
            net = model.net(scale)
            assert net.scale == scale


@pytest.mark.skipif(not SET5.exists(), reason="needs ../shared/datasets/benchmark/Set5 (not in a user's clone)")
@pytest.mark.parametrize("name", shipped())
def test_shipped_model_beats_bicubic_on_set5(name):
    backend = TorchBackend(REPO.load(name))
    checked = [s for s in TARGET_GAIN if s in backend.model.scales]
    if not checked:
        pytest.skip(f"{name} serves neither x2 nor x4")
    for scale in checked:
        r = evaluate(backend, SET5, scale, progress=False)
        assert r.psnr - r.bicubic_psnr >= TARGET_GAIN[scale], (
            f"{name} x{scale}: {r.psnr:.2f} dB vs bicubic {r.bicubic_psnr:.2f} dB")
