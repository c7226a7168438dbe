"""The evaluation protocol: published bicubic numbers, both dataset layouts, errors, the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BENCHMARK, NO_DATASETS, ROOT
from srserve.backends import create_backend
from srserve.evaluate import DatasetError, EvalError, EvalResult, discover, evaluate
from srserve.metrics import psnr_y, ssim_y
from srserve.models.imresize import imresize_uint8

needs_benchmark = pytest.mark.skipif(not (BENCHMARK / "Set5").is_dir() or not (BENCHMARK / "Set14").is_dir(),
                                     reason=NO_DATASETS)

# Bicubic PSNR / SSIM (Y, shave = scale) as published (VDSR, Kim et al. 2016, Table 3; SEEDS.md).
PUBLISHED = {
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
}
PSNR_TOLERANCE = {"Set5": 0.05, "Set14": 0.1}
SSIM_TOLERANCE = 0.002


@pytest.fixture(scope="module")
def bicubic():
    return create_backend("bicubic", "torch", device="cpu")


@needs_benchmark
@pytest.mark.parametrize("dataset,scale", list(PUBLISHED))
def test_bicubic_reproduces_published_numbers(bicubic, dataset, scale):
    result = evaluate(bicubic, BENCHMARK / dataset, scale, progress=False)
    psnr, ssim = PUBLISHED[dataset, scale]
    assert result.images == {"Set5": 5, "Set14": 14}[dataset]
    assert result.lr_source == "dataset"
    assert result.psnr == pytest.approx(psnr, abs=PSNR_TOLERANCE[dataset])
    assert result.ssim == pytest.approx(ssim, abs=SSIM_TOLERANCE)
    # the model `bicubic` (torch, BicubicUpsample) and the baseline (numpy imresize) agree
    assert result.psnr == pytest.approx(result.bicubic_psnr, abs=0.01)
    assert result.ssim == pytest.approx(result.bicubic_ssim, abs=1e-4)
    if dataset == "Set14":  # `bridge` is the gray image of Set14
        assert [r.name for r in result.per_image if r.gray] == ["img_003.png"]


def smooth_test_image(h: int, w: int, seed: int) -> np.ndarray:
    """A textured but band-limited RGB image (stands in for a photo when ../shared is absent)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.05, 0.4, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(128 + 60 * np.sin(fx * x + phase) * np.cos(fy * y) + 40 * np.sin(0.02 * (x + y)))
    return np.clip(np.stack(channels, axis=2), 0, 255).round().astype(np.uint8)


def source_images() -> list[np.ndarray]:
    """Two HR images of odd sizes (so mod-cropping matters): Set5 crops, or made here."""
    if (BENCHMARK / "Set5" / "x2" / "HR").is_dir():
        a = np.asarray(Image.open(BENCHMARK / "Set5" / "x2" / "HR" / "img_002.png").convert("RGB"))
        b = np.asarray(Image.open(BENCHMARK / "Set5" / "x2" / "HR" / "img_003.png").convert("RGB"))
        return [a[40:141, 30:127], b[10:90, 20:97]]
    return [smooth_test_image(101, 97, 0), smooth_test_image(80, 77, 1)]


def write_images(folder: Path, images: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"im{i}.png")


@pytest.fixture
def hr_dataset(tmp_path) -> Path:
    write_images(tmp_path / "hr_only" / "HR", source_images())
    return tmp_path / "hr_only"


def test_hr_layout_generates_lr_from_the_mod_cropped_hr(bicubic, hr_dataset):
    scale = 3
    result = evaluate(bicubic, hr_dataset, scale, progress=False)
    assert result.images == 2 and result.lr_source == "generated"
    for img, scored in zip(source_images(), result.per_image):
        h, w = img.shape[0] // scale * scale, img.shape[1] // scale * scale
        hr = img[:h, :w]
        bicubic_sr = imresize_uint8(imresize_uint8(hr, 1 / scale), scale)
        assert scored.bicubic_psnr == pytest.approx(psnr_y(bicubic_sr, hr, scale), abs=1e-9)
        assert scored.bicubic_ssim == pytest.approx(ssim_y(bicubic_sr, hr, scale), abs=1e-12)
        assert scored.psnr == pytest.approx(scored.bicubic_psnr, abs=0.01)
    assert result.psnr == pytest.approx(np.mean([r.psnr for r in result.per_image]), abs=1e-12)


def test_paired_layout_uses_the_given_lr(bicubic, hr_dataset, tmp_path):
    """Pairs holding exactly the LR the HR layout would generate score identically; other LR differ."""
    scale = 2
    images = [img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2] for img in source_images()]
    write_images(tmp_path / "paired" / "x2" / "HR", images)
    write_images(tmp_path / "paired" / "x2" / "LR", [imresize_uint8(img, 1 / scale) for img in images])
    paired = evaluate(bicubic, tmp_path / "paired", scale, progress=False)
    generated = evaluate(bicubic, hr_dataset, scale, progress=False)
    assert paired.lr_source == "dataset"
    assert paired.psnr == pytest.approx(generated.psnr, abs=1e-9)
    assert paired.ssim == pytest.approx(generated.ssim, abs=1e-12)
    # a blurrier LR (nearest-neighbour ×1/2 then blurred) must change the score: the file is really read
    write_images(tmp_path / "paired" / "x2" / "LR", [imresize_uint8(imresize_uint8(img, 1 / 4), 2) for img in images])
    assert evaluate(bicubic, tmp_path / "paired", scale, progress=False).psnr < paired.psnr - 0.5


def test_gray_and_rgba_images_are_accepted(bicubic, tmp_path):
    rgb = smooth_test_image(64, 60, 3)
    (tmp_path / "HR").mkdir()
    Image.fromarray(rgb).convert("L").save(tmp_path / "HR" / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "HR" / "rgba.png")
    result = evaluate(bicubic, tmp_path, 2, progress=False)
    by_name = {r.name: r for r in result.per_image}
    assert by_name["gray.png"].gray and not by_name["rgba.png"].gray
    assert all(math.isfinite(r.psnr) and r.psnr > 20 for r in result.per_image)


def test_lr_of_the_wrong_size_is_a_clear_error(bicubic, tmp_path):
    write_images(tmp_path / "x4" / "HR", [smooth_test_image(64, 64, 0)])
    write_images(tmp_path / "x4" / "LR", [smooth_test_image(17, 16, 0)])
    with pytest.raises(DatasetError, match=r"is 16×17 but .* needs 16×16 at x4"):
        evaluate(bicubic, tmp_path, 4, progress=False)


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("empty", "no images in"),
    ("no_lr_file", "has no LR counterpart"),
    ("other_scale", "has no x3 folder"),
    ("nothing", "has neither"),
])
def test_dataset_errors(tmp_path, layout, message):
    root = tmp_path / "ds"
    if layout == "empty":
        (root / "HR").mkdir(parents=True)
    elif layout == "no_lr_file":
        write_images(root / "x3" / "HR", [smooth_test_image(30, 30, 0)])
        (root / "x3" / "LR").mkdir()
    elif layout == "other_scale":
        write_images(root / "x2" / "HR", [smooth_test_image(30, 30, 0)])
    elif layout == "nothing":
        root.mkdir()
    with pytest.raises(DatasetError, match=message):
        discover(root, 3)


def test_scale_the_model_lacks_is_refused(bicubic, hr_dataset):
    with pytest.raises(EvalError, match="serves scales"):
        evaluate(bicubic, hr_dataset, 5, progress=False)


def test_repository_model_with_self_ensemble(tmp_path, hr_dataset):
    """A (tiny, untrained) repository model goes through create_backend and the pipeline."""
    from srserve.models.registry import build_network
    from srserve.models.repository import Repository

    hparams = {"n_resblocks": 1, "n_feats": 8, "res_scale": 1.0, "scale": 2}
    Repository(tmp_path / "repo").add_weights("tiny", "edsr", hparams, build_network("edsr", hparams).state_dict())
    backend = create_backend("tiny", "torch", repository=tmp_path / "repo", device="cpu")
    plain = evaluate(backend, hr_dataset, 2, progress=False)
    ensemble = evaluate(backend, hr_dataset, 2, self_ensemble=True, progress=False)
    assert plain.model == "tiny" and ensemble.self_ensemble and not plain.self_ensemble
    assert ensemble.bicubic_psnr == plain.bicubic_psnr
    assert ensemble.psnr != plain.psnr  # an untrained net is not flip/transpose equivariant
    with pytest.raises(EvalError, match=r"serves scales \[2\], not x3"):
        evaluate(create_backend("tiny", "torch", repository=tmp_path / "repo", device="cpu", scales=[3]), hr_dataset, 3, progress=False)


def test_json_never_holds_non_finite_numbers():
    result = EvalResult(model="m", scale=2, dataset="d", lr_source="generated", images=1, psnr=math.inf, ssim=1.0,
                        bicubic_psnr=30.0, bicubic_ssim=0.9, self_ensemble=False, tile=0, seconds=0.1)
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["psnr"] is None and data["bicubic_psnr"] == 30.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srserve", "eval", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@needs_benchmark
def test_cli_json_on_set5():
    proc = run_cli("--model", "bicubic", "--scale", "2", "--dataset", str(BENCHMARK / "Set5"), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    for key in ("model", "scale", "images", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "self_ensemble",
                "dataset", "per_image"):
        assert key in data
    assert data["model"] == "bicubic" and data["scale"] == 2 and data["images"] == 5 == len(data["per_image"])
    assert data["psnr"] == pytest.approx(33.66, abs=0.05)


def run_cli_here(capsys, *args: str) -> tuple[int, str, str]:
    """The same entry point in-process (no interpreter start-up): exit code, stdout, stderr."""
    from srserve.cli import main

    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_several_scales_give_json_lines(capsys, hr_dataset):
    code, out, err = run_cli_here(capsys, "--model", "bicubic", "--scale", "2,3", "--dataset", str(hr_dataset),
                                  "--json", "--quiet")
    assert code == 0, err
    objects = [json.loads(line) for line in out.strip().splitlines()]
    assert [o["scale"] for o in objects] == [2, 3]
    assert all(o["images"] == 2 and o["lr_source"] == "generated" for o in objects)


def test_cli_table(capsys, hr_dataset):
    code, out, err = run_cli_here(capsys, "--model", "bicubic", "--scale", "2", "--dataset", str(hr_dataset), "--quiet")
    assert code == 0, err
    header, _, row = out.splitlines()[:3]
    assert header.split()[:4] == ["model", "scale", "images", "PSNR"] and "gain" in header
    assert row.split()[:3] == ["bicubic", "x2", "2"]


@pytest.mark.parametrize("args,message", [
    (("--scale", "2", "--dataset", "/nonexistent/dataset"), "does not exist"),
    (("--scale", "7", "--dataset", "."), "serves scales"),
])
def test_cli_errors_are_one_line(capsys, args, message):
    code, _, err = run_cli_here(capsys, "--model", "bicubic", *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srserve eval: error:") and message in lines[0]


def test_cli_error_exits_non_zero_without_traceback():
    proc = run_cli("--model", "bicubic", "--scale", "2", "--dataset", "/nonexistent/dataset")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
