"""train/jpeg.py: JPEG artefacts in torch that match Pillow's (libjpeg's) closely enough to stand in
for them in the degradation pipeline on a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srserve.realworld import jpeg_roundtrip
from srserve.train import realistic
from srserve.train.jpeg import CHROMA_TABLE, LUMA_TABLE, jpeg_torch, quality_tables


def photo_like(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """N×3×H×W in [0, 1] on the 8-bit grid: smooth colour fields, hard-edged shapes and fine
    texture, so every JPEG frequency band has something to quantise."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    shapes = ((xx // 11 + yy // 7) % 3 == 0).float() * 0.35
    texture = torch.rand(n, 1, h, w, generator=g) * 0.15
    return (smooth * 0.6 + shapes + texture).clamp(0, 1).mul(255).round().div(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).mul(255).round().byte().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.parametrize("quality", [30, 50, 75, 95])
@pytest.mark.parametrize("size", [(64, 96), (37, 53)], ids=["macroblocks", "odd-size"])
def test_matches_pillow_up_to_rounding(quality, size):
    """Same artefacts as libjpeg: the loss of quality agrees within 0.25 dB and the two outputs
    are ≥ 38 dB apart (libjpeg's integer DCT rounds differently). On these images: 0.00-0.05 dB
    and 38.8-48.4 dB; on Set14's HR photos ≤ 0.01 dB and 46-48 dB."""
    x = photo_like(1, *size)
    original = to_uint8(x[0])
    pillow = jpeg_roundtrip(original, quality)
    ours = to_uint8(jpeg_torch(x, torch.tensor([quality]))[0])
    assert abs(psnr(original, ours) - psnr(original, pillow)) <= 0.25
    assert psnr(pillow, ours) >= 38
    assert psnr(original, ours) < 60  # it did compress


def test_each_sample_gets_its_own_quality():
    x = photo_like(3, 48, 48, seed=1)
    qualities = torch.tensor([30, 60, 95])
    batch = jpeg_torch(x, qualities)
    for i, q in enumerate(qualities):
        assert torch.equal(batch[i], jpeg_torch(x[i:i + 1], q.view(1))[0])
    errors = [(batch[i] - x[i]).abs().mean() for i in range(3)]
    assert errors[0] > errors[1] > errors[2]  # lower quality, larger error


def test_output_is_8_bit_in_range_and_on_the_input_device():
    out = jpeg_torch(photo_like(2, 40, 24), torch.tensor([40, 80]))
    assert out.shape == (2, 3, 40, 24) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, out.mul(255).round().div(255))


def test_quantisation_tables_scale_as_libjpeg():
    luma, chroma = quality_tables(torch.tensor([50, 100, 1, 75]), torch.device("cpu"))
    assert luma[0].flatten().tolist() == list(LUMA_TABLE) and chroma[0].flatten().tolist() == list(CHROMA_TABLE)
    assert luma[1].eq(1).all() and chroma[1].eq(1).all()  # quality 100: scale 0, clamped to 1
    assert luma[2].eq(255).all()  # quality 1: scale 5000, clamped to baseline's 255
    assert luma[3, 0, 0] == 8  # 16 x 50 % -> (800 + 50) // 100


def test_quantisation_tables_equal_pillows_at_every_quality():
    import io

    from PIL import Image

    luma, chroma = quality_tables(torch.arange(1, 101), torch.device("cpu"))
    for q in range(1, 101):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="JPEG", quality=q)
        with Image.open(buffer) as im:
            tables = im.quantization  # natural (row-major) order
        assert list(tables[0]) == luma[q - 1].flatten().int().tolist(), q
        assert list(tables[1]) == chroma[q - 1].flatten().int().tolist(), q


def test_pipeline_engine_choice():
    x = photo_like(2, 32, 32, seed=2)
    q = torch.tensor([50, 80])
    pillow = np.stack([jpeg_roundtrip(to_uint8(x[i]), int(q[i])) for i in range(2)])
    auto_on_cpu = realistic.jpeg(x, q, "auto")  # a CPU batch: Pillow, exact libjpeg
    assert np.array_equal(auto_on_cpu.permute(0, 2, 3, 1).mul(255).round().byte().numpy(), pillow)
    assert torch.equal(realistic.jpeg(x, q, "torch"), jpeg_torch(x, q))
    assert realistic.RealisticDegradation.from_config({"jpeg": "torch"}).jpeg == "torch"
    with pytest.raises(ValueError, match="degradation.jpeg"):
        realistic.RealisticDegradation.from_config({"jpeg": "libjpeg-turbo"})


def test_the_whole_pipeline_with_torch_jpeg_stays_close_to_pillows():
    """The JPEG engine draws nothing and the per-pixel noise comes from its own generator, so one
    seed draws the same degradations with either engine. With Gaussian noise (Poisson sampling
    consumes a pixel-dependent number of draws, so its noise differs) the LR images differ only by
    JPEG rounding, compounded over two rounds at Real-ESRGAN's qualities (30-95) on 24-px LR
    images: 36-39 dB over seeds 0-5 (one JPEG of a photo: 46-48 dB)."""
    from dataclasses import replace

    hr = photo_like(4, 96, 96, seed=5)
    config = realistic.RealisticDegradation.from_config({"rounds": [{"gaussian_noise_prob": 1.0}] * 2})
    lr_pillow, log_pillow = replace(config, jpeg="pillow")(hr, 4, torch.Generator().manual_seed(5))
    lr_torch, log_torch = replace(config, jpeg="torch")(hr, 4, torch.Generator().manual_seed(5))
    assert lr_pillow.shape == lr_torch.shape
    assert [r["jpeg_quality"].tolist() for r in log_pillow["rounds"]] == [r["jpeg_quality"].tolist() for r in log_torch["rounds"]]
    assert all(torch.equal(log_pillow["final"][k], log_torch["final"][k]) for k in ("sinc", "size", "omega"))
    mse = (lr_pillow - lr_torch).pow(2).mean().item()
    assert 10 * np.log10(1 / mse) >= 35


def test_a_seed_fixes_the_noise_wherever_the_pixels_are_drawn():
    """Noise draws no longer shift the later draws: two batches that differ in their pixels get
    the same parameters from the same seed, and the same batch gets the same LR twice."""
    config = realistic.RealisticDegradation()
    a, log_a = config(photo_like(2, 64, 64, seed=1), 4, torch.Generator().manual_seed(7))
    b, log_b = config(photo_like(2, 64, 64, seed=2), 4, torch.Generator().manual_seed(7))
    again, _ = config(photo_like(2, 64, 64, seed=1), 4, torch.Generator().manual_seed(7))
    assert torch.equal(a, again)
    assert all(torch.equal(log_a["final"][k], log_b["final"][k]) for k in ("sinc", "size", "omega"))
    assert log_a["rounds"][1]["resize"] == log_b["rounds"][1]["resize"]
