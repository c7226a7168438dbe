"""The training loop: resume, step, log, checkpoint, validate, publish.

Checkpoints (runs/NAME/last.pt) hold only tensors, numbers and strings, so they load with
``torch.load(weights_only=True)``; a killed run resumes from the last one. A finished run (or
``--publish`` at any time) writes the exported weights into the model repository with the
training facts, and refreshes that model's card.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import platform
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from srserve.models.registry import load_network
from srserve.models.repository import Repository, repository_lock

from .config import TrainConfig, load_config
from .data import expand_path
from .recipes import recipe_class


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'' if threads == 1 else 's'})"


def initialise_from(recipe, path: str) -> None:
    """Copies every tensor whose name and shape match (EDSR x3/x4 start from the trained x2)."""
    from srserve.models.checkpoint import load_checkpoint

    source = load_checkpoint(expand_path(path))
    own = recipe.net.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    recipe.net.load_state_dict(matched, strict=False)
    if recipe.ema_net is not None:
        recipe.ema_net.load_state_dict(recipe.net.state_dict())
    print(f"initialised {len(matched)}/{len(own)} tensors from {path}")


WARM_START_WARMUP = 200  # iterations; optim.warm_start_warmup overrides


@contextlib.contextmanager
def scaled_learning_rates(optimizers, factor: float):
    """Steps with every lr times ``factor``, then divides it back out, so a scheduler's own
    (multiplicative) change made during the step survives and the warm-up leaves no trace."""
    if factor >= 1.0:
        yield
        return
    groups = [g for opt in optimizers for g in opt.param_groups]
    for g in groups:
        g["lr"] *= factor
    try:
        yield
    finally:
        for g in groups:
            g["lr"] /= factor


def warmup_factor(steps_done: int, warmup: int) -> float:
    """Linear ramp over the first ``warmup`` steps after a warm start: the optimiser's moments
    start afresh there, and full-lr Adam steps on trained weights undo them (a DASR at 30.33 dB
    fell to 29.04 dB on Set5 after 5 steps at lr 4e-4 without it)."""
    return min(1.0, (steps_done + 1) / warmup) if warmup > 0 else 1.0


def cosine_factor(fraction: float, final: float) -> float:
    """1 at the start, ``final`` at the end (fraction 1) of a half cosine."""
    fraction = min(max(fraction, 0.0), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * fraction))


def published_progress(repository: Repository, cfg: TrainConfig) -> dict | None:
    """The training facts of the same model (entry, scales, hyper-parameters) published earlier,
    if they are behind this config's iterations; any config may continue it (e.g. a CPU
    config continuing GPU-trained weights with a smaller batch)."""
    try:
        entry = repository.get(cfg.repository_name)
    except Exception:  # no such entry yet
        return None
    hparams, scales = cfg.network()
    for weights in entry.weights:
        source = weights.source
        same_model = (entry.architecture == cfg.arch and sorted(weights.scales) == sorted(scales)
                      and weights.hparams == hparams)
        if same_model and 0 < int(source.get("iterations", 0)) < cfg.iterations:
            return {"path": entry.path / weights.file, **source}
    return None


class Trainer:
    def __init__(self, cfg: TrainConfig, repository: str | Path = "model_repository", device: str | None = None):
        self.cfg = cfg
        self.repository = Repository(repository)
        self.device = torch.device(device or cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.recipe = recipe_class(cfg.recipe)(cfg, self.device)
        self.iteration = 0
        self.elapsed = 0.0  # training wall time over all sessions
        self.best: dict = {}
        self.warm_starts: list[int] = []  # iterations where a run continued from published weights
        # Earlier stages of a run continued from published weights (maybe other hardware, batch or
        # config): the card must say how each part was trained. This stage is the rest of the totals.
        self.stages: list[dict] = []
        self.warmup_steps = 0  # set by a warm start: its optimiser moments start afresh
        cfg.run_dir.mkdir(parents=True, exist_ok=True)

    # --- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.cfg.run_dir / "last.pt"

    def save_checkpoint(self) -> None:
        r = self.recipe
        state = {
            "iteration": self.iteration, "elapsed": self.elapsed, "best": json.dumps(self.best),
            "modules": {k: m.state_dict() for k, m in r.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in r.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in r.schedulers.items()},
            "extra": r.extra_state() if hasattr(r, "extra_state") else {}, "warm_starts": self.warm_starts,
            "stages": json.dumps(self.stages),
            "torch_rng": torch.get_rng_state(), "sampler_rng": json.dumps(r.sampler.rng_state()),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        r = self.recipe
        for k, m in r.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in r.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in r.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if hasattr(r, "load_extra_state"):
            r.load_extra_state(state.get("extra", {}))
        torch.set_rng_state(state["torch_rng"])
        r.sampler.set_rng_state(json.loads(state["sampler_rng"]))
        self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
        self.best = json.loads(state["best"])
        self.warm_starts = list(state.get("warm_starts", []))
        self.stages = json.loads(state.get("stages", "[]"))
        return True

    def published_progress(self) -> dict | None:
        return published_progress(self.repository, self.cfg)

    def warm_start_from_published(self) -> bool:
        """Continues a run whose checkpoints are gone (a new machine) from its published weights.

        Weights, iteration count, wall time and best validation come back; optimiser moments do
        not (Adam rebuilds them in a few dozen steps) and the card records where that happened.
        """
        source = self.published_progress()
        if source is None:
            return False
        from srserve.models.checkpoint import load_checkpoint

        state = load_checkpoint(source["path"])
        self.recipe.net.load_state_dict(state, strict=True)
        if self.recipe.ema_net is not None:
            self.recipe.ema_net.load_state_dict(state, strict=True)
        if hasattr(self.recipe, "after_warm_start"):
            self.recipe.after_warm_start()
        self.iteration, self.elapsed = int(source["iterations"]), float(source.get("wall_time_s", 0))
        self.best = dict(source.get("validation") or {})
        self.warm_starts = [*source.get("warm_starts", []), self.iteration]
        self.stages = list(source.get("stages") or [stage_facts(source)])
        self.warmup_steps = int(self.cfg.optim.get("warm_start_warmup", WARM_START_WARMUP))
        with warnings.catch_warnings():  # stepping schedulers without optimiser steps is intended here
            warnings.simplefilter("ignore")
            for sched in self.recipe.schedulers.values():
                for _ in range(self.iteration):
                    sched.step()
        return True

    # --- validation and logging ---------------------------------------------------------
    def validate(self) -> dict[str, float]:
        from srserve.backends import TorchBackend
        from srserve.evaluate import evaluate

        dataset = expand_path(self.cfg.validation["dataset"])
        if not dataset.exists():
            return {}
        degrade = self.cfg.validation.get("degrade")  # e.g. real-v1: select weights on a real-world benchmark
        suffix = f"_{degrade}" if degrade else ""
        backend = TorchBackend(self.recipe.loaded_model(), self.device)
        return {f"val_psnr_x{s}{suffix}": round(evaluate(backend, dataset, s, progress=False, degrade=degrade).psnr, 3)
                for s in self.recipe.scales}

    def log(self, row: dict) -> None:
        path = self.cfg.run_dir / "log.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # --- the loop ------------------------------------------------------------------------
    def scale_learning_rates(self, base_lrs: dict[str, list[float]], factor: float) -> None:
        for name, opt in self.recipe.optimizers.items():
            for group, base in zip(opt.param_groups, base_lrs[name]):
                group["lr"] = base * factor

    def lr_warmup_share(self) -> float:
        """This step's share of the lr after a warm start in this trainer, counted from the warm
        start's iteration (not from this call), so a second run() continues the ramp."""
        start = self.warm_starts[-1] if self.warm_starts else 0  # 0: initialised from other weights (init_from)
        return warmup_factor(self.iteration - start, self.warmup_steps) if self.warmup_steps else 1.0

    def improves(self, val: dict) -> bool:
        keys = [k for k in val if k.startswith("val_psnr")]
        return not self.best or sum(val[k] for k in keys) > sum(self.best.get(k, float("-inf")) for k in keys)

    def run(self, iterations: int | None = None, publish_progress: bool = False, minutes: float | None = None) -> None:
        """Trains up to ``iterations`` (default: the config's), or for ``minutes`` of wall time
        this session, whichever ends first; the last step always validates and checkpoints."""
        total = iterations or self.cfg.iterations
        started = time.monotonic()
        deadline = started + minutes * 60 if minutes else float("inf")
        if self.iteration == 0 and self.cfg.init_from:
            initialise_from(self.recipe, self.cfg.init_from)
            # trained weights meet fresh Adam moments here too: ramp the lr if the config asks
            self.warmup_steps = int(self.cfg.optim.get("warm_start_warmup", 0))
        # Time-boxed runs (a lent GPU, a CPU slot) cannot know their iteration count ahead, so
        # optim.anneal_to makes the lr follow a cosine over the wall-time budget instead.
        anneal_to = self.cfg.optim.get("anneal_to") if minutes else None
        base_lrs = {k: [g["lr"] for g in o.param_groups] for k, o in self.recipe.optimizers.items()}
        bar = progress_bar(self.cfg.name, total, self.iteration, minutes)
        running: dict[str, float] = {}
        steps_in_window = 0  # a resumed run's first window can be shorter than log_every
        while self.iteration < total:
            if anneal_to is not None:
                self.scale_learning_rates(base_lrs, cosine_factor((time.monotonic() - started) / (minutes * 60), anneal_to))
            start = time.perf_counter()
            with scaled_learning_rates(self.recipe.optimizers.values(), self.lr_warmup_share()):
                losses = self.recipe.step(self.iteration)
            self.elapsed += time.perf_counter() - start
            self.iteration += 1
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v)
            steps_in_window += 1
            bar.update(1)
            last = self.iteration == total or time.monotonic() >= deadline
            if self.iteration % self.cfg.log_every == 0:
                avg = {k: round(v / steps_in_window, 4) for k, v in running.items()}
                running, steps_in_window = {}, 0
                bar.set_postfix(avg)
                self.log({"iteration": self.iteration, "elapsed_s": round(self.elapsed, 1),
                          "lr": self.recipe.current_lr(), "losses": json.dumps(avg)})
            if self.iteration % self.cfg.validate_every == 0 or last:
                val = self.validate()
                if val:
                    bar.write(f"{self.cfg.name} it {self.iteration}: {val}")
                    self.log({"iteration": self.iteration, "elapsed_s": round(self.elapsed, 1),
                              "lr": self.recipe.current_lr(), "losses": json.dumps(val)})
                    if self.improves(val):
                        self.best = {**val, "iteration": self.iteration}
                        if publish_progress:
                            self.publish()  # the repository always holds the best weights so far
            if self.iteration % self.cfg.checkpoint_every == 0 or last:
                self.save_checkpoint()
            if last:
                break
        bar.close()

    # --- publishing ------------------------------------------------------------------------
    def publish(self) -> None:
        """Writes the exported weights into the repository and refreshes the model card."""
        from .card import write_model_card

        cfg = self.cfg
        state = {k: v.detach().cpu() for k, v in self.recipe.exported().state_dict().items()}
        arch, hparams, _ = load_network(state, cfg.arch, self.recipe.hparams)  # proves it reloads strictly
        source = {
            "trained_by": "srserve train", "config": str(cfg.path), "recipe": cfg.recipe,
            "iterations": self.iteration, "wall_time_s": round(self.elapsed), "hardware": hardware_description(self.device),
            "data": cfg.data.get("folders"), "batch": cfg.data.get("batch"), "lr_patch": cfg.data.get("lr_patch"),
            **({"hr_patch": cfg.data["hr_patch"]} if cfg.data.get("hr_patch") else {}),  # VDSR crops HR patches
            "validation": self.best, **({"init_from": cfg.init_from} if cfg.init_from else {}),
            **({"warm_starts": self.warm_starts} if self.warm_starts else {}), "date": time.strftime("%Y-%m-%d"),
        }
        if self.stages:
            this_stage = {**stage_facts(source), **{k: source[k] - sum(st[k] for st in self.stages)
                                                    for k in ("iterations", "wall_time_s")}}
            source["stages"] = [*self.stages, this_stage]
            source["hardware"] = " + ".join(dict.fromkeys(str(st["hardware"]) for st in source["stages"]))
        with repository_lock(self.repository.root):  # runs of x3 and x4 publish into one entry
            entry = self.repository.add_weights(cfg.repository_name, arch, self.recipe.hparams, state, source=source,
                                                description=cfg.description, license="Apache-2.0 (weights trained by srserve)",
                                                provenance=f"trained by srserve from {cfg.path}")
            if cfg.display_name:
                entry.extra["display_name"] = cfg.display_name
            if cfg.validation.get("degrade"):  # validated on real-world inputs: what it is for
                entry.extra["trained_for"] = "real-world"
            entry.save()
            write_model_card(entry, device=str(self.device))
        print(f"published {cfg.repository_name} x{self.recipe.scales} -> {entry.path}")


def progress_bar(name: str, total: int, done: int, minutes: float | None) -> tqdm:
    """Iterations against the total; a time-boxed run (GPU configs say 1e6 iterations and stop on
    the clock) names its budget instead of an ETA for iterations it will never reach."""
    if minutes:
        return tqdm(initial=done, desc=f"{name} ({minutes:g} min budget)", unit="it", dynamic_ncols=True)
    return tqdm(total=total, initial=done, desc=name, dynamic_ncols=True)


STAGE_FACTS = ("config", "iterations", "wall_time_s", "hardware", "batch", "lr_patch")
OPTIONAL_STAGE_FACTS = ("hr_patch",)  # only the recipes that have them record them (VDSR)


def stage_facts(source: dict) -> dict:
    """How one stage of a run was trained, from a weights' source record."""
    return {**{k: source.get(k) for k in STAGE_FACTS},
            **{k: source[k] for k in OPTIONAL_STAGE_FACTS if source.get(k) is not None}}


def train(config_path: str, repository: str = "model_repository", *, resume: bool = True,
          iterations: int | None = None, device: str | None = None, publish: bool = True,
          publish_only: bool = False, minutes: float | None = None, threads: int | None = None) -> Trainer:
    cfg = load_config(config_path)
    if threads:
        cfg.threads = threads
    if publish and not cfg.publish and not publish_only:
        print(f"{cfg.name}: a probe (publish: false), validated but not published; measure it with "
              f"--publish-only --repository SCRATCH_DIR")
    publish = publish and cfg.publish
    trainer = Trainer(cfg, repository, device)
    if resume and trainer.resume():
        print(f"resumed {trainer.cfg.name} at iteration {trainer.iteration}")
    elif resume and not publish_only and trainer.warm_start_from_published():
        print(f"no checkpoint in {trainer.cfg.run_dir}: continuing {trainer.cfg.name} from its published weights "
              f"at iteration {trainer.iteration} (optimiser state starts afresh)")
    if not publish_only:
        trainer.run(iterations, publish_progress=publish, minutes=minutes)
    if publish_only or (publish and not trainer.best):  # no validation data: publish the final weights
        trainer.publish()
    return trainer
