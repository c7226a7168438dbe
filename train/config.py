"""Training configuration: one YAML file per run under train/configs/."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from srserve.models.errors import SRError


class ConfigError(SRError):
    pass


@dataclass
class TrainConfig:
    name: str                      # run name: checkpoints and logs go to runs/NAME
    recipe: str                    # edsr | mdsr | vdsr | esrgan_psnr | esrgan_gan | dasr
    arch: str
    hparams: dict
    repository_name: str           # model-repository entry written when the run finishes
    iterations: int
    data: dict                     # folders, lr_patch, batch, cache_dir, limit
    optim: dict                    # lr, betas, eps, weight_decay, momentum, halve_every / milestones, anneal_to, warm_start_warmup
    display_name: str = ""
    description: str = ""
    init_from: str | None = None   # weights (safetensors or checkpoint) to start from, e.g. EDSR x2 for x3/x4
    ema: float | None = None       # EMA decay for the exported weights
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    amp: str | None = None         # "bf16": forward passes under bfloat16 autocast (GPU training)
    channels_last: bool = False    # NHWC network and batches (faster convolutions on tensor cores)
    checkpoint_every: int = 200
    validate_every: int = 1000
    log_every: int = 20
    validation: dict = field(default_factory=lambda: {"dataset": "${SR_DATASETS}/benchmark/Set5"})
    extra: dict = field(default_factory=dict)  # recipe-specific settings (GAN weights, MoCo queue, ...)
    publish: bool = True           # false for probes: validate only, never write into the repository while training
    path: Path | None = None

    @property
    def run_dir(self) -> Path:
        """Checkpoints and logs: ``$SR_RUNS/NAME`` (default ``runs/NAME``). Point SR_RUNS outside
        a work tree that may be recreated, so long runs survive and resume."""
        return Path(os.environ.get("SR_RUNS", "runs")) / self.name

    def network(self) -> tuple[dict, list[int]]:
        """The network's full hyper-parameters (the architecture's defaults under the config's) and
        the scales it serves: what a published entry must match for this config to continue it."""
        from srserve.models import get_spec, scales_of

        hparams = {**get_spec(self.arch).default_hparams, **self.hparams}
        return hparams, scales_of(self.arch, hparams)


def read_settings(path: Path, including: tuple[Path, ...] = ()) -> dict:
    """The settings of one YAML file; ``extends: OTHER.yaml`` (relative to the file) starts from
    OTHER's settings, so a later stage of a run states only what it changes."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    base = data.pop("extends", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in including or base_path == path.resolve():
        raise ConfigError(f"{path}: 'extends' loops back to {base_path}")
    return merged(read_settings(base_path, (*including, path.resolve())), data)


def merged(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists included)
    replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    data = read_settings(path)
    known = set(TrainConfig.__dataclass_fields__) - {"path"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
    try:
        return TrainConfig(**data, path=path)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
