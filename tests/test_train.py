"""Training recipes: a few steps of tiny configs on CPU, plus the rules each recipe must follow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from srserve.train.config import TrainConfig
from srserve.train.recipes import recipe_class
from srserve.train.recipes.dasr import MoCoQueue, info_nce
from srserve.train.recipes.vdsr import clip_gradients_adjustable


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    """Six smooth synthetic 96x96 images (gradients, discs, stripes): learnable in a few steps."""
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    for i in range(6):
        a, b, c = rng.random(3)
        img = np.stack([a * xx + (1 - a) * yy, np.sin(6 * b * np.pi * xx) * 0.5 + 0.5,
                        ((xx - c) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(float)], axis=-1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return str(folder)


def tiny_config(image_folder, tmp_path, recipe, arch, hparams, **kw) -> TrainConfig:
    data = {"folders": [image_folder], "lr_patch": 12, "batch": 4, "cache_dir": str(tmp_path / "cache"), **kw.pop("data", {})}
    return TrainConfig(name=f"t_{recipe}", recipe=recipe, arch=arch, hparams=hparams, repository_name="t",
                       iterations=10, data=data, optim={"lr": 1e-3, **kw.pop("optim", {})}, **kw)


def run_steps(recipe, n: int, key: str) -> list[float]:
    return [recipe.step(i)[key] for i in range(n)]


def assert_decreases(losses: list[float]) -> None:
    head, tail = np.mean(losses[:5]), np.mean(losses[-5:])
    assert tail < head, f"loss did not go down: first {head:.4f}, last {tail:.4f}"


@pytest.mark.parametrize("recipe,arch,hparams,key", [
    ("edsr", "edsr", {"n_resblocks": 1, "n_feats": 8, "scale": 2}, "l1"),
    ("mdsr", "mdsr", {"n_resblocks": 1, "n_feats": 8, "scales": [2, 3, 4]}, "l1"),
    ("esrgan_psnr", "rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4}, "l1"),
])
def test_pixel_recipes_reduce_loss(image_folder, tmp_path, recipe, arch, hparams, key):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, recipe, arch, hparams, data={"lr_patch": 8})
    assert_decreases(run_steps(recipe_class(recipe)(cfg, torch.device("cpu")), 40, key))


def test_vdsr_recipe_reduces_loss(image_folder, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "vdsr", "vdsr", {"num_layers": 4, "n_feats": 8},
                      data={"hr_patch": 24, "batch": 8}, optim={"lr": 0.01, "clip_theta": 0.01})
    assert_decreases(run_steps(recipe_class("vdsr")(cfg, torch.device("cpu")), 40, "mse"))


def test_esrgan_gan_recipe_reduces_generator_loss(image_folder, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "esrgan_gan", "rrdbnet",
                      {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4},
                      data={"lr_patch": 8, "batch": 2}, extra={"allow_random_vgg": True, "disc_features": 4})
    recipe = recipe_class("esrgan_gan")(cfg, torch.device("cpu"))
    losses = [recipe.step(i) for i in range(30)]
    assert_decreases([l["percep"] + 1e-2 * l["l1"] / 255 for l in losses])
    assert all(np.isfinite(l["d"]) and np.isfinite(l["g_gan"]) for l in losses)


def test_dasr_recipe_both_stages(image_folder, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "dasr", "dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "scale": 2},
                      data={"lr_patch": 12, "batch": 4, "sigma": [0.2, 2.0]},
                      extra={"encoder_iterations": 25, "queue_size": 32})
    recipe = recipe_class("dasr")(cfg, torch.device("cpu"))
    encoder_only = [recipe.step(i) for i in range(25)]
    assert all(set(l) == {"contrastive"} for l in encoder_only)  # stage 1 trains the encoder alone
    joint = [recipe.step(i) for i in range(25, 55)]
    assert_decreases([l["l1"] for l in joint])


def test_adjustable_clipping_bound_is_theta_over_lr():
    p = torch.nn.Parameter(torch.zeros(5))
    p.grad = torch.tensor([-50.0, -0.5, 0.0, 0.5, 50.0])
    bound = clip_gradients_adjustable([p], theta=0.4, lr=0.1)
    assert bound == pytest.approx(4.0)
    assert torch.equal(p.grad, torch.tensor([-4.0, -0.5, 0.0, 0.5, 4.0]))
    p.grad = torch.tensor([-500.0, -50.0, 0.0, 50.0, 500.0])
    clip_gradients_adjustable([p], theta=0.4, lr=0.001)  # smaller lr, looser bound (400)
    assert torch.equal(p.grad, torch.tensor([-400.0, -50.0, 0.0, 50.0, 400.0]))


def test_mdsr_step_updates_only_the_chosen_scale(image_folder, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "mdsr", "mdsr", {"n_resblocks": 1, "n_feats": 8, "scales": [2, 3, 4]})
    recipe = recipe_class("mdsr")(cfg, torch.device("cpu"))
    recipe.pick_scale = lambda: 3
    before = {k: v.clone() for k, v in recipe.net.state_dict().items()}
    for i in range(3):  # several steps: Adam's momentum must not move the unused heads either
        recipe.step(i)
    after = recipe.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("pre_process.1.") for k in changed) and any(k.startswith("upsample.1.") for k in changed)
    assert any(k.startswith("body.") for k in changed)
    assert not any(k.startswith(("pre_process.0.", "pre_process.2.", "upsample.0.", "upsample.2.")) for k in changed)


def test_moco_queue_replaces_oldest_keys_and_wraps():
    queue = MoCoQueue(dim=4, size=5, generator=torch.Generator().manual_seed(0))
    original = queue.keys.clone()
    first = torch.eye(4)[:3]
    queue.enqueue(first)
    assert queue.ptr == 3
    assert torch.equal(queue.keys[:, :3], first.T) and torch.equal(queue.keys[:, 3:], original[:, 3:])
    second = -torch.eye(4)[:3]
    queue.enqueue(second)  # wraps: slots 3, 4, 0
    assert queue.ptr == 1
    assert torch.equal(queue.keys[:, [3, 4, 0]], second.T)
    assert torch.equal(queue.keys[:, 1:3], first.T[:, 1:3])


def test_info_nce_prefers_matching_positives():
    q = torch.eye(4)[:2]
    queue = torch.eye(4)[:, 2:]  # negatives orthogonal to the queries
    good = info_nce(q, q.clone(), queue, 0.07)
    bad = info_nce(q, torch.eye(4)[2:], queue, 0.07)  # "positives" equal to negatives
    assert good < 0.01 < bad


def write_config(tmp_path, image_folder, iterations: int) -> str:
    import yaml

    path = tmp_path / "tiny_edsr.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny_edsr", "recipe": "edsr", "arch": "edsr", "repository_name": "tiny",
        "hparams": {"n_resblocks": 1, "n_feats": 8, "scale": 2}, "iterations": iterations,
        "data": {"folders": [image_folder], "lr_patch": 8, "batch": 2, "cache_dir": str(tmp_path / "cache")},
        "optim": {"lr": 1e-3, "milestones": [5], "gamma": 0.5},
        "validation": {"dataset": str(tmp_path / "no-such-set")}, "checkpoint_every": 2}))
    return str(path)


def test_checkpoint_resume_restores_weights_and_iteration(image_folder, tmp_path, monkeypatch):
    from srserve.train.runner import Trainer, load_config

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    cfg = load_config(write_config(tmp_path, image_folder, 8))
    first = Trainer(cfg, tmp_path / "repo")
    first.run(4)
    second = Trainer(cfg, tmp_path / "repo")
    assert second.resume() and second.iteration == 4
    for (k, a), b in zip(first.recipe.net.state_dict().items(), second.recipe.net.state_dict().values()):
        assert torch.equal(a, b), k


def test_run_without_checkpoints_continues_from_published_weights(image_folder, tmp_path, monkeypatch):
    """A new machine has the repository (in git) but not the run's checkpoints."""
    from srserve.models.checkpoint import load_checkpoint
    from srserve.models.repository import Repository
    from srserve.train.runner import Trainer, load_config, train

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs-machine-1"))
    config = write_config(tmp_path, image_folder, 8)
    first = Trainer(load_config(config), tmp_path / "repo")
    first.run(6)
    first.publish()
    published = load_checkpoint(tmp_path / "repo" / "tiny" / "x2.safetensors")

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs-machine-2"))
    second = Trainer(load_config(config), tmp_path / "repo")
    assert second.warm_start_from_published() and second.iteration == 6
    for k, v in second.recipe.net.state_dict().items():
        assert torch.equal(v, published[k]), k
    assert second.recipe.current_lr() == pytest.approx(5e-4)  # the schedule is where it was (milestone 5 passed)

    finished = train(config, str(tmp_path / "repo"))
    assert finished.iteration == 8
    entry = Repository(tmp_path / "repo").get("tiny")
    assert entry.weights[0].source["iterations"] == 8 and entry.weights[0].source["warm_starts"] == [6]
    assert Trainer(load_config(config), tmp_path / "repo").published_progress() is None  # finished: nothing to continue


def test_a_probe_config_validates_but_never_publishes(image_folder, tmp_path, monkeypatch):
    """``publish: false`` (train/configs/probes/): a run that forgets --no-publish still leaves the
    repository alone; --publish-only, an explicit request, writes it into the repository given."""
    import yaml

    from srserve.train.runner import train

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    config = write_config(tmp_path, image_folder, 6)
    settings = yaml.safe_load(open(config))
    open(config, "w").write(yaml.safe_dump({**settings, "publish": False}))
    assert train(config, str(tmp_path / "repo")).iteration == 6  # without validation data a run publishes its end
    assert not (tmp_path / "repo" / "tiny").exists()
    train(config, str(tmp_path / "scratch"), publish_only=True)
    assert (tmp_path / "scratch" / "tiny" / "x2.safetensors").exists()


def test_a_warm_start_ramps_the_lr_up_while_the_fresh_optimiser_settles(image_folder, tmp_path, monkeypatch):
    """Full-lr Adam steps with fresh moments undo trained weights (a DASR lost 1.3 dB in 5 steps)."""
    import yaml

    from srserve.train.runner import Trainer, load_config

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs-1"))
    config = write_config(tmp_path, image_folder, 12)
    settings = yaml.safe_load(open(config))
    open(config, "w").write(yaml.safe_dump({**settings, "optim": {**settings["optim"], "warm_start_warmup": 4}}))
    first = Trainer(load_config(config), tmp_path / "repo")
    first.run(6)
    first.publish()

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs-2"))
    second = Trainer(load_config(config), tmp_path / "repo")
    assert second.warm_start_from_published()
    scheduled = second.recipe.current_lr()
    seen = []
    monkeypatch.setattr(second.recipe, "step", lambda it: seen.append(second.recipe.optimizers["net"].param_groups[0]["lr"]) or {})
    second.run(12)
    assert seen == pytest.approx([scheduled * f for f in (0.25, 0.5, 0.75, 1, 1, 1)])
    assert second.recipe.current_lr() == pytest.approx(scheduled)  # no trace left on the schedule


def test_scaled_learning_rates_keep_a_scheduler_step_made_inside():
    from srserve.train.runner import scaled_learning_rates

    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    with scaled_learning_rates([opt], 0.1):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_first_log_window_after_a_resume_averages_only_its_own_steps(image_folder, tmp_path, monkeypatch):
    import csv
    import json

    import yaml

    from srserve.train.runner import Trainer, load_config

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    config = write_config(tmp_path, image_folder, 8)
    settings = yaml.safe_load(open(config))
    open(config, "w").write(yaml.safe_dump({**settings, "log_every": 4}))
    Trainer(load_config(config), tmp_path / "repo").run(6)  # checkpoint at 6, inside the window 5..8
    resumed = Trainer(load_config(config), tmp_path / "repo")
    assert resumed.resume() and resumed.iteration == 6
    monkeypatch.setattr(resumed.recipe, "step", lambda iteration: {"l1": 1.0})
    resumed.run(8)
    rows = list(csv.DictReader(open(tmp_path / "runs" / "tiny_edsr" / "log.csv")))
    last = [r for r in rows if r["iteration"] == "8" and "l1" in r["losses"]][-1]
    assert json.loads(last["losses"]) == {"l1": 1.0}  # 2 steps of 1.0, not (1.0 + 1.0) / 4


def test_another_config_continues_the_same_model_and_the_card_lists_both_stages(image_folder, tmp_path, monkeypatch):
    """E.g. GPU-trained weights continued on a CPU with a smaller batch: each stage keeps its facts."""
    import yaml

    from srserve.models.repository import Repository
    from srserve.train.card import render_card
    from srserve.train.runner import Trainer, load_config, train

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    first_config = write_config(tmp_path, image_folder, 6)
    train(first_config, str(tmp_path / "repo"))
    continuation = tmp_path / "tiny_edsr_continued.yaml"
    settings = yaml.safe_load(open(first_config))
    continuation.write_text(yaml.safe_dump({**settings, "name": "tiny_continued", "iterations": 10,
                                            "data": {**settings["data"], "batch": 1}}))

    interrupted = Trainer(load_config(str(continuation)), tmp_path / "repo")
    assert interrupted.warm_start_from_published() and interrupted.iteration == 6
    interrupted.run(8)  # checkpoints at 8; the next call resumes from the checkpoint, stages intact
    finished = train(str(continuation), str(tmp_path / "repo"))
    assert finished.iteration == 10

    source = Repository(tmp_path / "repo").get("tiny").weights[0].source
    first, second = source["stages"]
    assert (first["config"], first["iterations"], first["batch"]) == (first_config, 6, 2)
    assert (second["config"], second["iterations"], second["batch"]) == (str(continuation), 4, 1)
    assert "hr_patch" not in first and "hr_patch" not in second  # only HR-patch recipes (VDSR) record one
    assert source["iterations"] == 10 and source["hardware"] == first["hardware"]
    entry = Repository(tmp_path / "repo").get("tiny")
    card = render_card(entry, [])
    assert "10 iterations" in card and "In stages: 6 iterations on" in card and "; then 4 iterations on" in card
    assert "(batch 2, LR patch 8, " in card and "(batch 1, LR patch 8, " in card
    assert "## Notes" not in card
    entry.extra["card_notes"] = ["misses its target by 0.8 dB"]  # model.json's notes survive re-rendering
    assert render_card(entry, []).endswith("## Notes\n\n- misses its target by 0.8 dB\n")


def test_card_names_the_patch_each_stage_cropped():
    """VDSR's recipe crops HR patches (its LR is the bicubic upscale), the others LR patches."""
    from srserve.train.card import batch_and_patch

    assert batch_and_patch({"batch": 16, "lr_patch": 48}) == "batch 16, LR patch 48"
    assert batch_and_patch({"batch": 64, "lr_patch": None, "hr_patch": 48}) == "batch 64, HR patch 48"
    assert batch_and_patch({"batch": 4}) == "batch 4, patch ?"  # a record from before patches were kept


def test_sampler_with_data_on_the_device_gives_the_same_batches(image_folder, tmp_path):
    """On a GPU the images live on the device; batches must not depend on where they are built."""
    from srserve.train.data import PatchSampler

    host = PatchSampler([image_folder], [2, 3], 12, cache_dir=str(tmp_path / "cache"), seed=5)
    device = PatchSampler([image_folder], [2, 3], 12, cache_dir=str(tmp_path / "cache"), seed=5, device="cpu")
    assert isinstance(device.hr[0], torch.Tensor) and isinstance(host.hr[0], np.ndarray)
    for scale in (2, 3, 2):
        for a, b in zip(host.batch(4, scale, margin=2), device.batch(4, scale, margin=2)):
            assert torch.equal(a, b)
    assert torch.equal(host.hr_batch(3, 24, per_image=2), device.hr_batch(3, 24, per_image=2))


def test_vdsr_starts_from_the_bicubic_input_with_he_initialised_layers(image_folder, tmp_path):
    """Zero output layer: the residual is 0 at step 0; hidden layers N(0, 2/(9·out)) as in the paper."""
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "vdsr", "vdsr", {"num_layers": 6, "n_feats": 16}, data={"hr_patch": 24})
    recipe = recipe_class("vdsr")(cfg, torch.device("cpu"))
    ilr, _ = recipe.luma_batch(2, 3)
    with torch.no_grad():
        assert torch.equal(recipe.net(ilr), ilr)
    hidden = recipe.net.residual_layer[0].conv.weight
    assert hidden.std().item() == pytest.approx((2 / (9 * 16)) ** 0.5, rel=0.15)


def test_vdsr_adam_option_reduces_loss(image_folder, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "vdsr", "vdsr", {"num_layers": 4, "n_feats": 8},
                      data={"hr_patch": 24, "batch": 8}, optim={"type": "adam", "lr": 1e-3, "weight_decay": 0.0})
    recipe = recipe_class("vdsr")(cfg, torch.device("cpu"))
    assert isinstance(recipe.optimizers["net"], torch.optim.Adam)
    assert_decreases(run_steps(recipe, 40, "mse"))


@pytest.mark.parametrize("recipe,arch,hparams,key,data", [
    ("edsr", "edsr", {"n_resblocks": 1, "n_feats": 8, "scale": 2}, "l1", {"lr_patch": 8}),
    ("vdsr", "vdsr", {"num_layers": 4, "n_feats": 8}, "mse", {"hr_patch": 24, "batch": 8}),
])
def test_bf16_autocast_and_channels_last_steps_reduce_loss(image_folder, tmp_path, recipe, arch, hparams, key, data):
    """The GPU configs' settings (amp: bf16, channels_last) on CPU: same recipe, loss goes down."""
    torch.manual_seed(0)
    optim = {"type": "adam", "weight_decay": 0.0} if recipe == "vdsr" else {}
    cfg = tiny_config(image_folder, tmp_path, recipe, arch, hparams, data=data, optim=optim, amp="bf16", channels_last=True)
    r = recipe_class(recipe)(cfg, torch.device("cpu"))
    assert next(r.net.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert_decreases(run_steps(r, 40, key))


def test_dasr_step_under_bf16_autocast(image_folder, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(image_folder, tmp_path, "dasr", "dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "scale": 2},
                      data={"lr_patch": 8, "batch": 4}, extra={"encoder_iterations": 1, "queue_size": 16},
                      amp="bf16", channels_last=True)
    r = recipe_class("dasr")(cfg, torch.device("cpu"))
    losses = [r.step(i) for i in range(3)]
    assert all(np.isfinite(v) for step in losses for v in step.values())


def test_unknown_amp_setting_is_refused(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, "edsr", "edsr", {"n_resblocks": 1, "n_feats": 8, "scale": 2}, amp="fp8")
    with pytest.raises(ValueError, match="amp must be bf16"):
        recipe_class("edsr")(cfg, torch.device("cpu")).step(0)


def test_cosine_factor_runs_from_one_to_final():
    from srserve.train.runner import cosine_factor

    assert cosine_factor(0.0, 0.02) == 1.0
    assert cosine_factor(0.5, 0.02) == pytest.approx(0.51)
    assert cosine_factor(1.0, 0.02) == pytest.approx(0.02)
    assert cosine_factor(3.0, 0.02) == pytest.approx(0.02)  # past the budget it stays at the floor


class SteppingClock:
    """A monotonic clock that advances a fixed step per reading: a time-boxed run then takes the
    same number of iterations on any CPU, however loaded (a real 3 s budget did not)."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def monotonic(self) -> float:
        self.now += self.step_s
        return self.now


def test_time_boxed_run_anneals_lr_over_its_minutes_and_publishes_contiguous_weights(image_folder, tmp_path, monkeypatch):
    import time
    import types

    import yaml

    from srserve.models.checkpoint import load_checkpoint
    from srserve.train import runner
    from srserve.train.runner import train

    clock = SteppingClock(0.25)  # the runner reads it twice per step: 0.5 s per step, 6 steps in 3 s
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(
        monotonic=clock.monotonic, perf_counter=time.perf_counter, strftime=time.strftime))

    monkeypatch.setenv("SR_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "timed.yaml"
    path.write_text(yaml.safe_dump({
        "name": "timed", "recipe": "edsr", "arch": "edsr", "repository_name": "timed", "channels_last": True,
        "hparams": {"n_resblocks": 1, "n_feats": 8, "scale": 2}, "iterations": 10**6,
        "data": {"folders": [image_folder], "lr_patch": 8, "batch": 2, "cache_dir": str(tmp_path / "cache")},
        "optim": {"lr": 1e-3, "anneal_to": 0.02}, "validation": {"dataset": str(tmp_path / "none")}}))
    trainer = train(str(path), str(tmp_path / "repo"), minutes=0.05)
    assert 1 < trainer.iteration < 10**6
    assert trainer.recipe.current_lr() < 0.5e-3  # annealed towards 0.02 × lr by the end of the budget
    published = load_checkpoint(tmp_path / "repo" / "timed" / "x2.safetensors")
    assert all(v.is_contiguous() for v in published.values())


def test_repository_lock_excludes_a_second_publisher(tmp_path):
    """The held lock refuses a non-blocking flock from another descriptor (no sleep-then-check);
    a second publisher waiting on it enters once it is released."""
    import fcntl
    import os
    import threading

    from srserve.models.repository import repository_lock

    entered = threading.Event()

    def second():
        with repository_lock(tmp_path):
            entered.set()

    with repository_lock(tmp_path):
        probe = os.open(tmp_path, os.O_RDONLY)  # another open file description, as another process has
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.is_set()
    thread.join(60)
    assert entered.is_set()


def test_repository_lock_is_reentrant_in_one_thread(tmp_path):
    """Publishing writes the card under the lock it already holds: the nested lock must not wait
    on itself, and leaving it must not release the outer one."""
    import fcntl
    import os

    from srserve.models.repository import repository_lock

    with repository_lock(tmp_path):
        with repository_lock(tmp_path):
            pass
        probe = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)


def card_row(psnr: float) -> dict:
    return {"dataset": "Set5", "scale": 2, "psnr": psnr, "ssim": 0.9, "bicubic": 30.0}


def test_a_card_measured_while_the_gate_records_keeps_the_verdict(tmp_path):
    """The card writer measures for minutes from a copy of model.json; a gate verdict recorded
    meanwhile must survive its write (it used to be overwritten by the stale copy)."""
    from export_nets import tiny_repository
    from srserve.gate import GateResult, record_cpu_bf16
    from srserve.train.card import save_measurements

    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    read_before_measuring = repo.get("edsr")
    record_cpu_bf16(repo, GateResult(model="edsr", scale=2, dataset="Set5", images=5, psnr_fp32=30.0, psnr_bf16=30.01,
                                     max_levels=2, scope="graph", engine="OpenVINO test", cpu="test CPU",
                                     cpu_bf16=["avx512_bf16"], seconds=1.0, measured="2026-01-01"))
    save_measurements(read_before_measuring, {"benchmarks": [card_row(33.5)]}, [card_row(33.5)])
    data = json.loads((repo.root / "edsr" / "model.json").read_text())
    assert data["benchmarks"] == [card_row(33.5)]
    assert data["weights"][0]["cpu_bf16"]["2"]["safe"] is True
    assert "| Set5 | x2 | 33.50 |" in (repo.root / "edsr" / "README.md").read_text()
    assert read_before_measuring.extra["benchmarks"] == [card_row(33.5)]  # the caller's copy sees it too


def test_a_card_refuses_figures_measured_on_weights_replaced_meanwhile(tmp_path):
    from export_nets import TINY, make_net, tiny_repository
    from srserve.models.repository import RepositoryError
    from srserve.train.card import save_measurements

    repo = tiny_repository(tmp_path / "repo", names=("edsr",))
    read_before_measuring = repo.get("edsr")
    arch, hparams = TINY["edsr"][0]
    repo.add_weights("edsr", arch, hparams, make_net(arch, hparams, seed=5).state_dict())  # published meanwhile
    before = (repo.root / "edsr" / "model.json").read_text()
    with pytest.raises(RepositoryError, match="changed while they were measured"):
        save_measurements(read_before_measuring, {"benchmarks": [card_row(33.5)]}, [card_row(33.5)])
    assert (repo.root / "edsr" / "model.json").read_text() == before


def test_a_config_extends_another_and_states_only_what_it_changes(tmp_path):
    from srserve.train.config import ConfigError, load_config

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "recipe": "edsr", "arch": "edsr", "hparams": {"scale": 2, "n_feats": 8},
        "repository_name": "edsr", "iterations": 10, "data": {"folders": ["a"], "lr_patch": 8, "batch": 2},
        "optim": {"lr": 1e-3, "betas": [0.9, 0.999]}}))
    (tmp_path / "stage.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "stage", "data": {"batch": 4}, "optim": {"betas": [0.5]}}))
    cfg = load_config(tmp_path / "stage.yaml")
    assert cfg.name == "stage" and cfg.iterations == 10 and cfg.hparams == {"scale": 2, "n_feats": 8}
    assert cfg.data == {"folders": ["a"], "lr_patch": 8, "batch": 4}  # mappings merge key by key
    assert cfg.optim == {"lr": 1e-3, "betas": [0.5]}  # a list replaces
    assert cfg.path == tmp_path / "stage.yaml"
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


CHECKOUT = Path(__file__).resolve().parents[1]
CONFIGS = CHECKOUT / "train" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_a_config_that_publishes_into_a_shipped_model_continues_those_weights(path):
    """A config naming a shipped model must describe the very network shipped there, and be behind
    it in iterations: otherwise a run starts from scratch and its first validation overwrites the
    shipped weights (publishing keeps the best of *this* run)."""
    from srserve.models.repository import Repository
    from srserve.train.config import load_config
    from srserve.train.runner import published_progress

    cfg = load_config(path)
    repository = Repository(CHECKOUT / "model_repository")
    if cfg.repository_name not in repository.names():
        assert cfg.repository_name.endswith("-cpu") or cfg.repository_name == "esrgan-gan", cfg.repository_name
        return
    assert published_progress(repository, cfg) is not None, \
        f"{path.name} does not describe the shipped {cfg.repository_name}, or is not behind it in iterations"
