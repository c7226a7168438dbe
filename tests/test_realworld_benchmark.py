"""The real-world benchmark ``real-v1`` (srserve/realworld.py): regenerated bit for bit from the
HR images and their file names, made by ``srserve eval --degrade real-v1``."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srserve.backends import create_backend
from srserve.evaluate import evaluate
from srserve.models.imresize import imresize
from srserve.realworld import REAL_V1, DegradationError, gaussian_blur, get_degradation, jpeg_roundtrip

REPO_ROOT = Path(__file__).parents[1]
DATASETS = Path(os.environ.get("SR_DATASETS") or REPO_ROOT.parent / "shared" / "datasets")
SET5 = DATASETS / "benchmark" / "Set5"

# SHA-256 of the five real-v1 LR images of Set5 x4 (concatenated in file order), as README lists it:
# a change here means the benchmark changed and every recorded real-v1 figure must be re-measured.
SET5_X4_REAL_V1_SHA256 = "687cb17d0894a03b47b0512b5dcef9837c7f46e5f22dc07a9880e236627bc760"


@pytest.fixture(scope="module")
def hr_dataset(tmp_path_factory) -> Path:
    """An HR-only dataset: two textured RGB images and one gray one (multiples of 4)."""
    root = tmp_path_factory.mktemp("real") / "HR"
    root.mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:72] / 64.0
    for i in range(2):
        img = np.stack([np.sin(8 * xx + i), np.cos(5 * yy), xx * yy], axis=-1) * 100 + 120 + rng.normal(0, 5, (64, 72, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"img{i}.png")
    Image.fromarray((np.sin(10 * xx) * 100 + 128).astype(np.uint8)).save(root / "gray.png")
    return root.parent


def textured(h: int = 64, w: int = 72) -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_same_file_name_gives_the_same_lr_bit_for_bit_and_another_name_another_lr():
    hr = textured()
    a = REAL_V1.apply(hr, 4, "img_001.png")
    assert np.array_equal(a, REAL_V1.apply(hr.copy(), 4, "img_001.png"))
    assert not np.array_equal(a, REAL_V1.apply(hr, 4, "img_002.png"))
    assert a.shape == (16, 18, 3) and a.dtype == np.uint8


def test_parameters_are_drawn_in_the_documented_ranges():
    drawn = [REAL_V1.draw(f"img_{i:03d}.png")[0] for i in range(40)]
    assert all(0.4 <= d["blur_sigma"] <= 1.2 and 1.0 <= d["noise_sigma"] <= 5.0 and 75 <= d["jpeg_quality"] <= 90
               for d in drawn)
    assert len({d["jpeg_quality"] for d in drawn}) > 5  # really drawn per image


def test_the_lr_is_the_documented_chain_blur_bicubic_noise_jpeg():
    """Stage by stage: Gaussian blur, MATLAB bicubic to 1/4, Gaussian noise of the drawn σ, then a
    Pillow JPEG round trip at the drawn quality."""
    hr = textured()
    params, rng = REAL_V1.draw("x.png")
    blurred = gaussian_blur(hr.astype(np.float64), params["blur_sigma"])
    assert blurred.std() < hr.std()
    down = imresize(blurred, output_shape=(16, 18))
    noisy = np.clip(np.round(down + rng.standard_normal(down.shape) * params["noise_sigma"]), 0, 255).astype(np.uint8)
    residual = noisy.astype(np.float64) - down
    assert abs(residual.std() - params["noise_sigma"]) < 0.35 * params["noise_sigma"] + 0.3  # ~σ (plus rounding)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=params["jpeg_quality"])
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    assert np.array_equal(REAL_V1.apply(hr, 4, "x.png"), expected)


def test_gaussian_blur_kernel_sums_to_one_and_keeps_a_flat_image():
    flat = np.full((20, 20, 3), 77.0)
    assert np.allclose(gaussian_blur(flat, 1.1), 77.0)


def test_gray_images_stay_gray():
    gray = textured()[..., 0]
    lr = REAL_V1.apply(gray, 4, "bridge.png")
    assert lr.ndim == 2 and lr.shape == (16, 18)
    assert np.array_equal(jpeg_roundtrip(gray, 80).shape, gray.shape)


def test_evaluation_with_degrade_is_reproducible_and_differs_from_the_clean_protocol(hr_dataset):
    bicubic = create_backend("bicubic", "torch", device="cpu")
    first = evaluate(bicubic, hr_dataset, 4, progress=False, degrade="real-v1")
    second = evaluate(bicubic, hr_dataset, 4, progress=False, degrade="real-v1")
    clean = evaluate(bicubic, hr_dataset, 4, progress=False)
    assert first.lr_source == "real-v1" and first.images == 3
    assert first.lr_sha256 == second.lr_sha256 and len(first.lr_sha256) == 64
    assert [r.psnr for r in first.per_image] == [r.psnr for r in second.per_image]
    assert clean.lr_sha256 is None and clean.psnr != first.psnr


@pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5} (set SR_DATASETS to the datasets folder)")
def test_set5_real_v1_lr_images_are_the_recorded_ones():
    result = evaluate(create_backend("bicubic", "torch", device="cpu"), SET5, 4, progress=False, degrade="real-v1")
    assert result.lr_sha256 == SET5_X4_REAL_V1_SHA256


def test_unknown_degradation_is_a_one_line_error(capsys, hr_dataset):
    from srserve.cli import main

    with pytest.raises(DegradationError, match="known: real-v1"):
        get_degradation("real-v0")
    code = main(["eval", "--model", "bicubic", "--scale", "4", "--dataset", str(hr_dataset), "--degrade", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "unknown degradation 'nope'" in err[0]


def test_cli_prints_the_lr_digest(capsys, hr_dataset):
    from srserve.cli import main

    assert main(["eval", "--model", "bicubic", "--scale", "4", "--dataset", str(hr_dataset), "--degrade", "real-v1"]) == 0
    out = capsys.readouterr().out
    assert "(LR real-v1)" in out and "x4 LR images sha256 " in out


def test_list_benchmarks_real_world_and_paper_gap_tables(tmp_path, capsys):
    """The tables come from what model.json records: real-v1 beside clean, and the gap to VDSR's paper."""
    import json
    import shutil

    from srserve.cli import main
    from test_import_cli import imported_edsr_with_card

    repo, data = imported_edsr_with_card(
        tmp_path,
        benchmarks=[{"dataset": "Set5", "scale": 2, "psnr": 37.0, "ssim": 0.95, "bicubic": 33.68},
                    {"dataset": "Set14", "scale": 2, "psnr": 33.1, "ssim": 0.9, "bicubic": 30.23}],
        real_world_benchmarks=[{"dataset": "Set5", "scale": 2, "psnr": 30.5, "ssim": 0.8, "bicubic": 30.0,
                                "degrade": "real-v1", "lr_sha256": "0" * 64}])
    shutil.copytree(repo / "edsr-tiny", repo / "edsr-real")  # the same, trained for real-world inputs
    (repo / "edsr-real" / "model.json").write_text(json.dumps({**data, "name": "edsr-real", "trained_for": "real-world"}))
    capsys.readouterr()

    assert main(["list", "--benchmarks", "--real-world", "--repository", str(repo)]) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["`bicubic`", "x2", "30.00", "—", "—", "—", "33.68", "30.23"],
                    ["`edsr-real`", "x2", "30.50", "+0.50", "—", "—", "37.00", "33.10"],
                    ["`edsr-tiny`", "x2", "30.50", "+0.50", "—", "—", "37.00", "33.10"]]

    assert main(["list", "--benchmarks", "--paper-gap", "--repository", str(repo)]) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()[2:]]
    # the real-world model is judged on real-world inputs, not against VDSR's clean figures
    assert rows == [["`edsr-tiny`", "x2", "37.00", "37.53", "-0.53", "33.10", "33.03", "+0.07", "EDSR: 38.11 / 33.92"]]

    assert main(["list", "--paper-gap", "--repository", str(repo)]) == 1
    assert "go with --benchmarks" in capsys.readouterr().err
