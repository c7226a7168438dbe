"""The shipped models' real-world (real-v1) figures: each card's rows are what the model measures
now on the same, bit-identical LR images, and `realesrnet` is held to issue 18's target."""
from __future__ import annotations

import pytest

from conftest import BENCHMARK, NO_DATASETS, ROOT
from srserve.backends import TorchBackend
from srserve.evaluate import evaluate
from srserve.models.repository import Repository

USES_ALL_THREADS = True  # full-size models: both cores
SET5 = BENCHMARK / "Set5"
REPO = Repository(ROOT / "model_repository")
needs_set5 = pytest.mark.skipif(not SET5.exists(), reason=NO_DATASETS)
# issue 18: the real-world model beats the shipped edsr by >= 1.0 dB and dasr by >= 0.5 dB on Set14 real-v1
TARGET_OVER = {"edsr": 1.0, "dasr": 0.5}


def with_real_world() -> list[str]:
    return [n for n in REPO.names() if REPO.get(n).extra.get("real_world_benchmarks")]


def card_row(name: str, dataset: str, scale: int = 4) -> dict:
    rows = [r for r in REPO.get(name).extra["real_world_benchmarks"] if (r["dataset"], r["scale"]) == (dataset, scale)]
    assert rows, f"{name}: model.json has no real-world {dataset} x{scale} row"
    return rows[0]


def test_every_default_model_records_real_world_figures():
    assert {"edsr", "mdsr", "vdsr", "esrgan", "dasr"} <= set(with_real_world())


@needs_set5
@pytest.mark.parametrize("name", with_real_world())
def test_real_world_card_rows_are_what_the_model_measures(name):
    row = card_row(name, "Set5")
    r = evaluate(TorchBackend(REPO.load(name, scales=[4])), SET5, 4, progress=False, degrade=row["degrade"])
    assert r.lr_sha256 == row["lr_sha256"], f"{name}: the {row['degrade']} LR images changed since the card"
    assert r.psnr == pytest.approx(row["psnr"], abs=0.01), f"{name}: the card's {row['degrade']} row is stale"


needs_realesrnet = pytest.mark.skipif("realesrnet" not in REPO.names(), reason="realesrnet is not published in model_repository")


@needs_realesrnet
@pytest.mark.parametrize("other", list(TARGET_OVER))
@pytest.mark.xfail(strict=True, reason="issue 18's target is not met: the CPU-trained realesrnet is +0.29 dB over edsr "
                                       "and +0.45 dB over dasr on Set14 real-v1 (README, Real-world benchmark)")
def test_realesrnet_meets_issue_18s_target_on_real_world_set14(other):
    mine, theirs = card_row("realesrnet", "Set14"), card_row(other, "Set14")
    assert mine["lr_sha256"] == theirs["lr_sha256"]  # the same LR images
    margin = mine["psnr"] - theirs["psnr"]
    assert margin >= TARGET_OVER[other], f"realesrnet is {margin:+.2f} dB over {other}, target +{TARGET_OVER[other]}"


@needs_realesrnet
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_realesrnet_beats_every_bicubic_trained_model_on_real_world_inputs(dataset):
    """What it does achieve: the best real-v1 figure of the repository, on both sets."""
    mine = card_row("realesrnet", dataset)
    others = [n for n in with_real_world() if REPO.get(n).trained_for == "bicubic"]
    assert {"edsr", "mdsr", "vdsr", "esrgan", "dasr"} <= set(others)
    for other in others:
        theirs = card_row(other, dataset)
        assert mine["lr_sha256"] == theirs["lr_sha256"]
        assert mine["psnr"] > theirs["psnr"], f"{other} scores {theirs['psnr']:.2f} on {dataset} real-v1, realesrnet {mine['psnr']:.2f}"
