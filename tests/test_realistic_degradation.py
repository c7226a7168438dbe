"""Real-ESRGAN's second-order degradation pipeline (train/realistic.py) and the realesrnet recipe:
seeded and reproducible, and every stage changes the image the way its docstring says."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from srserve.train import realistic
from srserve.train.realistic import RealisticDegradation, Round

ALL_TYPES = torch.arange(len(realistic.KERNEL_TYPES))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_batch(n: int = 3, size: int = 64) -> torch.Tensor:
    """Gradients and a disc: structure that blur, resize and JPEG all visibly change."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.08).float()
    img = torch.stack([xx, disc, 0.5 + 0.4 * torch.sin(12 * math.pi * yy)])
    return torch.stack([img.roll(i * 5, dims=-1) for i in range(n)])


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared Laplacian."""
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return torch.nn.functional.conv2d(x, lap, groups=x.shape[1]).pow(2).mean(dim=(1, 2, 3))


# --- the whole pipeline ------------------------------------------------------------------------
def test_same_seed_gives_the_identical_batch_and_another_seed_a_different_one():
    hr = smooth_batch(4, 64)
    config = RealisticDegradation()
    a, log_a = config(hr, 4, gen(7))
    b, log_b = config(hr, 4, gen(7))
    c, _ = config(hr, 4, gen(8))
    assert torch.equal(a, b)
    assert log_a["rounds"][0]["resize"] == log_b["rounds"][0]["resize"]
    assert not torch.equal(a, c)


def test_output_is_the_lr_size_and_quantised_to_8_bits():
    hr = smooth_batch(2, 64)
    for seed in range(4):
        lr, _ = RealisticDegradation()(hr, 4, gen(seed))
        assert lr.shape == (2, 3, 16, 16)
        assert lr.min() >= 0 and lr.max() <= 1
        assert torch.equal(lr * 255, (lr * 255).round())


def test_config_overrides_merge_into_each_rounds_defaults_and_unknown_keys_are_refused():
    config = RealisticDegradation.from_config({"final_sinc_prob": 0.0, "rounds": [{"sinc_prob": 0.5}, {"jpeg_quality": [60, 70]}]})
    assert config.final_sinc_prob == 0.0
    assert config.rounds[0].sinc_prob == 0.5 and config.rounds[0].sigma == (0.2, 3.0)
    assert config.rounds[1].jpeg_quality == (60, 70) and config.rounds[1].sigma == (0.2, 1.5)  # round 2's default
    with pytest.raises(ValueError, match="unknown degradation round settings"):
        RealisticDegradation.from_config({"rounds": [{"sigmaa": [1, 2]}]})
    with pytest.raises(ValueError, match="unknown degradation settings"):
        RealisticDegradation.from_config({"final_sinc": 0.5})
    with pytest.raises(ValueError, match="kernel_size"):
        RealisticDegradation.from_config({"kernel_size": [7, 25]})


# --- kernels -----------------------------------------------------------------------------------
def test_every_kernel_type_sums_to_one_and_stays_inside_its_drawn_size():
    n = 60
    rnd = Round()
    sizes = realistic.odd_sizes(n, (7, 21), gen(1))
    assert set(sizes.tolist()) <= set(range(7, 22, 2)) and len(set(sizes.tolist())) > 3
    kernels, params = realistic.family_kernels(ALL_TYPES.repeat(10), rnd, sizes, gen(2))
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(n), atol=1e-5)
    assert (kernels >= 0).all()
    outside = 1 - realistic.support_mask(sizes)
    assert (kernels * outside).abs().max() == 0
    isotropic = ALL_TYPES.repeat(10) % 2 == 0
    assert torch.equal(params["sigma_x"][isotropic], params["sigma_y"][isotropic])
    iso = kernels[isotropic]
    assert torch.allclose(iso, iso.transpose(1, 2), atol=1e-6)  # isotropic kernels are symmetric


def test_plateau_and_generalised_kernels_differ_from_the_gaussian_of_the_same_sigma():
    one = torch.tensor([1.5])
    zero = torch.zeros(1)
    q = realistic.quadratic_form(one, one, zero, 21)
    size = torch.tensor([21])
    gauss = realistic.normalise(torch.exp(-0.5 * q))
    rnd = Round(sigma=(1.5, 1.5), betag=(3.0, 3.0), betap=(2.0, 2.0))
    general, _ = realistic.family_kernels(torch.tensor([2]), rnd, size, gen())
    plateau, _ = realistic.family_kernels(torch.tensor([4]), rnd, size, gen())
    centre = 10
    # β = 3 flattens the top and cuts the tail; the plateau kernel has the heavy 1/q² tail
    assert general[0, centre, centre + 1] / general[0, centre, centre] > gauss[0, centre, centre + 1] / gauss[0, centre, centre]
    assert plateau[0, centre, 0] / plateau[0, centre, centre] > gauss[0, centre, 0] / gauss[0, centre, centre]


def test_sinc_kernel_sums_to_one_has_negative_lobes_and_rings_at_an_edge():
    omega = torch.tensor([math.pi / 3, math.pi / 2])
    k = realistic.sinc_kernels(omega, torch.tensor([21, 13]))
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    assert (k < 0).any(dim=2).any(dim=1).all()  # side lobes
    spectrum = torch.fft.fft2(k).abs()
    assert spectrum[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    assert spectrum[0, 10, 10] < 0.1  # far above the cut-off π/3: stopped
    edge = torch.zeros(2, 1, 48, 48)
    edge[..., 24:] = 1.0
    out = realistic.blur(edge, k)
    assert out.max() > 1.02 and out.min() < -0.02  # overshoot on both sides: ringing


def test_blur_stage_lowers_high_frequency_energy():
    rnd = Round(sinc_prob=0.0, sigma=(1.0, 3.0))
    hr = torch.rand(4, 3, 48, 48, generator=gen(3))
    kernels, _ = realistic.blur_kernels(4, rnd, (7, 21), gen(4))
    blurred = realistic.blur(hr, kernels)
    assert (high_frequency_energy(blurred) < 0.5 * high_frequency_energy(hr)).all()


# --- resize, noise, JPEG -----------------------------------------------------------------------
@pytest.mark.parametrize("probs,direction", [((1, 0, 0), "up"), ((0, 1, 0), "down"), ((0, 0, 1), "keep")])
def test_resize_stage_changes_the_size_as_drawn(probs, direction):
    rnd = Round(resize_probs=probs, resize_range=(0.5, 1.5))
    x = smooth_batch(2, 40)
    for seed in range(3):
        out, drawn = realistic.random_resize(x, rnd, (40, 40), gen(seed))
        assert drawn["direction"] == direction and drawn["mode"] in realistic.RESIZE_MODES
        assert {"up": 1 <= drawn["factor"] <= 1.5, "down": 0.5 <= drawn["factor"] <= 1, "keep": drawn["factor"] == 1}[direction]
        assert out.shape[-2:] == (int(40 * drawn["factor"]), int(40 * drawn["factor"])) == drawn["size"]


@pytest.mark.parametrize("probs,mode", [((1, 0, 0), "area"), ((0, 1, 0), "bilinear"), ((0, 0, 1), "bicubic")])
def test_resize_mode_probs_pick_the_mode(probs, mode):
    rnd = Round(resize_probs=(0, 1, 0), resize_range=(0.5, 0.9), resize_mode_probs=probs)
    for seed in range(4):
        _, drawn = realistic.random_resize(smooth_batch(1, 40), rnd, (40, 40), gen(seed))
        assert drawn["mode"] == mode


def test_resize_mode_probs_must_name_every_mode():
    with pytest.raises(ValueError, match="resize_mode_probs"):
        RealisticDegradation.from_config({"rounds": [{"resize_mode_probs": [0.5, 0.5]}]})


def test_uniform_resize_mode_keeps_the_earlier_draws():
    """A config without resize_mode_probs draws the mode as before it existed (one randint)."""
    drawn = [realistic.resize_mode(None, gen(seed)) for seed in range(12)]
    expected = [realistic.RESIZE_MODES[int(torch.randint(3, (1,), generator=gen(seed)))] for seed in range(12)]
    assert drawn == expected and set(drawn) == set(realistic.RESIZE_MODES)


def test_gaussian_noise_raises_the_residual_std_by_the_drawn_sigma():
    x = torch.full((6, 3, 96, 96), 0.5)
    rnd = Round(gaussian_noise_prob=1.0, gray_noise_prob=0.5, noise_sigma=(5.0, 25.0))
    out, drawn = realistic.add_noise(x, rnd, gen(5))
    residual_std = (out - x).std(dim=(1, 2, 3)) * 255
    assert torch.allclose(residual_std, drawn["sigma"], rtol=0.05)
    gray = drawn["gray"]
    assert gray.any() and (~gray).any()
    residual = out - x
    assert torch.equal(residual[gray][:, 0], residual[gray][:, 1])  # gray noise: one plane
    assert not torch.equal(residual[~gray][:, 0], residual[~gray][:, 1])


def test_poisson_noise_grows_with_the_drawn_scale_and_the_signal():
    rnd = Round(gaussian_noise_prob=0.0, gray_noise_prob=0.0, poisson_scale=(0.5, 1.5))  # small enough not to clip
    for level in (0.2, 0.5):
        x = torch.full((4, 3, 96, 96), level)
        out, drawn = realistic.add_noise(x, rnd, gen(6))
        expected = drawn["poisson_scale"] * math.sqrt(level * 255) / 255  # std of counts/255 is sqrt(λ)/255
        assert torch.allclose((out - x).std(dim=(1, 2, 3)), expected, rtol=0.05)


def test_jpeg_stage_equals_a_pillow_round_trip_at_the_drawn_quality():
    x = smooth_batch(3, 48)
    qualities = realistic.jpeg_qualities(3, Round(jpeg_quality=(30, 95)), gen(9))
    assert ((30 <= qualities) & (qualities <= 95)).all()
    out = realistic.jpeg(x, qualities)
    for img, q, got in zip(x, qualities, out):
        arr = img.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="JPEG", quality=int(q))
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        assert np.array_equal(got.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy(), expected)
    assert not torch.equal(out, x.mul(255).round().div(255))


def test_final_stage_brings_every_sample_to_the_lr_size():
    x = torch.rand(2, 3, 23, 29, generator=gen(1))
    qualities = torch.tensor([50, 90])
    out, drawn = realistic.final_stage(x, (16, 16), RealisticDegradation(final_sinc_prob=1.0), qualities, gen(2))
    assert out.shape == (2, 3, 16, 16) and drawn["sinc"].all()


# --- the recipe ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return str(folder)


def realesrnet_config(image_folder, tmp_path, **kw):
    from srserve.train.config import TrainConfig

    return TrainConfig(name="t_realesrnet", recipe="realesrnet", arch="rrdbnet",
                       hparams={"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4}, repository_name="t-real",
                       iterations=4, data={"folders": [image_folder], "lr_patch": 12, "batch": 2},
                       optim={"lr": 1e-3, **kw.pop("optim", {})},
                       validation={"dataset": str(tmp_path / "no-such-set")}, **kw)


def test_realesrnet_recipe_trains_on_degraded_batches_and_checkpoints_its_generator(image_folder, tmp_path, monkeypatch):
    from srserve.train.runner import Trainer

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    trainer = Trainer(realesrnet_config(image_folder, tmp_path, checkpoint_every=2), tmp_path / "repo")
    before = [p.detach().clone() for p in trainer.recipe.net.parameters()]
    trainer.run(2)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.recipe.net.parameters()))
    lr, hr = trainer.recipe.training_pair(4)
    assert lr.shape == (2, 3, 12, 12) and hr.shape == (2, 3, 48, 48)

    resumed = Trainer(realesrnet_config(image_folder, tmp_path, checkpoint_every=2), tmp_path / "repo")
    assert resumed.resume() and resumed.iteration == 2
    trainer.resume()  # both at the checkpoint: the same next degraded batch
    assert all(torch.equal(a, b) for a, b in zip(trainer.recipe.training_pair(4), resumed.recipe.training_pair(4)))


def test_init_from_other_weights_ramps_the_lr_when_the_config_asks(image_folder, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from srserve.train.runner import Trainer

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    source = Trainer(realesrnet_config(image_folder, tmp_path), tmp_path / "repo")
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.recipe.net.state_dict().items()}, str(path))
    trainer = Trainer(realesrnet_config(image_folder, tmp_path, init_from=str(path), optim={"warm_start_warmup": 4}),
                      tmp_path / "repo")
    seen = []
    monkeypatch.setattr(trainer.recipe, "step", lambda it: seen.append(trainer.recipe.optimizers["net"].param_groups[0]["lr"]) or {})
    trainer.run(6)
    assert seen == pytest.approx([1e-3 * f for f in (0.25, 0.5, 0.75, 1, 1, 1)])


def test_validation_on_the_real_world_benchmark_names_it_in_the_key(image_folder, tmp_path, monkeypatch):
    from srserve.train.runner import Trainer

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    hr = tmp_path / "val" / "HR"
    hr.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(hr / "a.png")
    cfg = realesrnet_config(image_folder, tmp_path)
    cfg.validation = {"dataset": str(hr.parent), "degrade": "real-v1"}
    trainer = Trainer(cfg, tmp_path / "repo")
    val = trainer.validate()
    assert list(val) == ["val_psnr_x4_real-v1"] and np.isfinite(val["val_psnr_x4_real-v1"])
    trainer.publish()  # a model validated on real-world inputs says so in model.json (and /v1/models)
    assert trainer.repository.get("t-real").trained_for == "real-world"


def test_antialiased_bicubic_downscale_is_the_evaluations_matlab_imresize():
    """Away from the borders (MATLAB mirrors them, torch renormalises its weights there)."""
    from srserve.models.imresize import imresize

    hr = torch.rand(1, 3, 64, 48, generator=gen(11))
    matlab = torch.from_numpy(imresize(hr[0].permute(1, 2, 0).double().numpy(), 0.25)).permute(2, 0, 1).float()
    inner = (slice(None), slice(2, -2), slice(2, -2))
    antialiased = realistic.resize(hr, (16, 12), "bicubic", antialias=True)[0]
    aliased = realistic.resize(hr, (16, 12), "bicubic")[0]
    assert torch.allclose(antialiased[inner], matlab[inner], atol=1e-4)
    assert (aliased - matlab)[inner].abs().mean() > 0.02
