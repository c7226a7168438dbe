"""The model repository: one folder per model, Triton-style, with weights and a model.json.

    REPO/NAME/model.json          what the model is (format below)
    REPO/NAME/<file>.safetensors  one file per network; EDSR has one per scale, MDSR/VDSR one
    REPO/NAME/README.md           optional model card

model.json::

    {"format": "srserve-model/1", "name": "edsr", "architecture": "edsr", "description": "...",
     "weights": [{"file": "x2.safetensors", "scales": [2], "hparams": {...}, "sha256": "...",
                  "source": {"file": "edsr_baseline_x2-1bc95232.pt", "sha256": "..."}}],
     "input": {"value_range": 255.0, "color": "rgb", "pre_upsample": false},
     "receptive_radius": 36.5, "fp16_safe": false, "license": null, "provenance": null}

A weights file may also hold ``"cpu_bf16": {"2": {"safe": true, "psnr_fp32": ..., ...}}``: the
verdict of the CPU bf16 gate per scale (``srserve gate cpu-bf16``), which lets ``auto`` run
that scale in bf16 on CPUs with native bf16.

``bicubic`` is a built-in model every repository has (the evaluation baseline).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import SRNet
from .errors import SRError
from .registry import build_network, get_spec, scales_of
from .resize import BicubicUpsample
from .spec import ArchSpec, InputConvention

FORMAT = "srserve-model/1"
BICUBIC = "bicubic"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RepositoryError(SRError):
    """A problem with a repository entry, worded for the user (one line)."""


def default_repository() -> Path:
    return Path(os.environ.get("SR_REPOSITORY", "model_repository"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_held = threading.local()  # roots this thread has locked, so a nested lock does not wait on itself


@contextlib.contextmanager
def repository_lock(root: str | os.PathLike) -> Iterator[None]:
    """An exclusive flock on the repository folder for a read-modify-write of its model.json files:
    publishing runs, the card writer and the bf16 gate, in one process or several. Re-entrant in
    one thread (publishing writes the card under the lock it already holds); other threads and
    processes wait."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    held = _held.__dict__.setdefault("roots", set())
    if key in held:
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)  # releases the lock


@dataclass
class WeightsFile:
    file: str
    scales: list[int]
    hparams: dict
    sha256: str = ""
    source: dict = field(default_factory=dict)
    # scale (str) -> the CPU bf16 gate's verdict and numbers (``srserve gate cpu-bf16``); kept
    # with the file it was measured on, so re-imported weights start ungated
    cpu_bf16: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {"file": self.file, "scales": self.scales, "hparams": self.hparams, "sha256": self.sha256,
                "source": self.source}
        if self.cpu_bf16:
            data["cpu_bf16"] = self.cpu_bf16
        return data


@dataclass
class ModelEntry:
    name: str
    path: Path
    architecture: str
    weights: list[WeightsFile]
    description: str = ""
    fp16_safe: bool = False
    license: str | None = None
    provenance: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def scales(self) -> list[int]:
        return sorted({s for w in self.weights for s in w.scales})

    @property
    def spec(self):
        return get_spec(self.architecture)

    @property
    def trained_for(self) -> str:
        """``real-world`` for a model trained on degraded photos (model.json ``trained_for``, set on
        publishing a model validated on a real-world benchmark); ``bicubic`` otherwise."""
        return self.extra.get("trained_for") or "bicubic"

    def receptive_radius(self, scale: int) -> float:
        return self.spec.receptive_radius(self.weights_for(scale).hparams)

    def cpu_bf16_safe(self, scale: int) -> bool:
        """Whether the weights serving ``scale`` passed the CPU bf16 gate, measured with the bf16
        scope the architecture has now (``ArchSpec.cpu_bf16_body``)."""
        verdict = self.weights_for(scale).cpu_bf16.get(str(int(scale)), {})
        return bool(verdict.get("safe")) and verdict.get("scope") == cpu_bf16_scope(self.spec)

    def weights_for(self, scale: int) -> WeightsFile:
        for w in self.weights:
            if int(scale) in w.scales:
                return w
        raise RepositoryError(f"model {self.name!r} has no x{scale} weights; it serves scales {self.scales}")

    def to_json(self) -> dict:
        spec = self.spec
        radius = {str(s): round(self.receptive_radius(s), 2) for s in self.scales}
        return {
            "format": FORMAT, "name": self.name, "architecture": self.architecture, "description": self.description,
            "weights": [w.to_json() for w in self.weights], "input": spec.convention.to_json(),
            "receptive_radius": radius, "fp16_safe": self.fp16_safe, "license": self.license,
            "provenance": self.provenance, **self.extra,
        }

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "model.json.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(self.path / "model.json")

    def load(self, device: str | torch.device = "cpu", scales: list[int] | None = None) -> "LoadedModel":
        """Builds and loads the networks serving ``scales`` (all by default)."""
        wanted = scales or self.scales
        nets: dict[int, SRNet] = {}
        for w in self.weights:
            if not set(w.scales) & set(wanted):
                continue
            net = load_weights_file(self.path / w.file, self.architecture, w.hparams).to(device)
            for s in w.scales:
                nets[s] = SRNet(self.spec, net, s).eval()
        return LoadedModel(name=self.name, architecture=self.architecture, nets=nets, entry=self)

    @classmethod
    def from_json(cls, path: Path, data: dict) -> "ModelEntry":
        known = {"format", "name", "architecture", "description", "weights", "input", "receptive_radius",
                 "fp16_safe", "license", "provenance"}
        return cls(
            name=data["name"], path=path, architecture=data["architecture"],
            weights=[WeightsFile(**w) for w in data["weights"]], description=data.get("description", ""),
            fp16_safe=bool(data.get("fp16_safe", False)), license=data.get("license"),
            provenance=data.get("provenance"), extra={k: v for k, v in data.items() if k not in known},
        )


def cpu_bf16_scope(spec: ArchSpec) -> str:
    """What runs in bf16 on the CPU: ``graph`` (all of it, OpenVINO's hint) or ``body:<a>+<b>``."""
    return "body:" + "+".join(spec.cpu_bf16_body) if spec.cpu_bf16_body else "graph"


def load_weights_file(path: Path, arch: str, hparams: dict) -> nn.Module:
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise RepositoryError(f"weights file {path} is missing") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise RepositoryError(f"weights file {path} is unreadable: {exc}") from None
    net = build_network(arch, hparams)
    net.load_state_dict(state, strict=True)
    return net.eval()


class BicubicNet(nn.Module):
    """The ``bicubic`` baseline with the SRNet interface (MATLAB-exact, RGB in [0, 1])."""

    needs_degradation = False

    def __init__(self, scale: int):
        super().__init__()
        self.scale = int(scale)
        self.resize = BicubicUpsample(scale)

    def forward(self, x: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        return self.resize(x)


@dataclass
class LoadedModel:
    """Networks of one repository model, ready to run: ``net(scale)`` is an SRNet."""

    name: str
    architecture: str
    nets: dict
    entry: ModelEntry | None = None

    @property
    def scales(self) -> list[int]:
        return sorted(self.nets)

    def net(self, scale: int) -> nn.Module:
        try:
            return self.nets[int(scale)]
        except KeyError:
            raise RepositoryError(f"model {self.name!r} serves scales {self.scales}, not x{scale}") from None

    def receptive_radius(self, scale: int) -> float:
        return 2.0 if self.entry is None else self.entry.receptive_radius(scale)

    @property
    def spec(self) -> ArchSpec:
        return BICUBIC_SPEC if self.entry is None else self.entry.spec

    def hparams(self, scale: int) -> dict:
        """The hyper-parameters of the network serving ``scale`` (defaults filled in)."""
        if self.entry is None:
            return {"scale": int(scale)}
        return {**self.entry.spec.default_hparams, **self.entry.weights_for(scale).hparams}

    @property
    def needs_degradation(self) -> bool:
        return self.spec.needs_degradation

    @property
    def fp16_safe(self) -> bool:
        return bool(self.entry and self.entry.fp16_safe)

    def cpu_bf16_safe(self, scale: int) -> bool:
        return bool(self.entry and self.entry.cpu_bf16_safe(scale))


BICUBIC_SPEC = ArchSpec(
    name=BICUBIC, build=BicubicNet, detect=lambda sd: None, receptive_radius=lambda h: 2.0,
    convention=InputConvention(value_range=1.0), default_hparams={"scale": 4},
    description="MATLAB-exact bicubic interpolation (baseline)",
)


def bicubic_model(scales=(2, 3, 4, 8)) -> LoadedModel:
    return LoadedModel(name=BICUBIC, architecture=BICUBIC, nets={s: BicubicNet(s) for s in scales})


class Repository:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_repository()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "model.json").is_file())

    def entries(self) -> list[ModelEntry]:
        return [self.get(n) for n in self.names()]

    def get(self, name: str) -> ModelEntry:
        path = self.root / name
        meta = path / "model.json"
        if not NAME_PATTERN.match(name) or not meta.is_file():
            known = ", ".join([BICUBIC, *self.names()])
            raise RepositoryError(f"no model {name!r} in {self.root} (available: {known})")
        try:
            return ModelEntry.from_json(path, json.loads(meta.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{meta} is not a valid model.json: {exc}") from None

    @contextlib.contextmanager
    def edit(self, name: str) -> Iterator[ModelEntry]:
        """Reads one entry from disk under the repository lock and saves it on leaving: whatever
        took minutes to measure is written onto the current model.json, not onto the copy read
        before, so a card re-measured while the gate records its verdict keeps both."""
        with repository_lock(self.root):
            entry = self.get(name)
            yield entry
            entry.save()

    def load(self, name: str, device: str | torch.device = "cpu", scales: list[int] | None = None) -> LoadedModel:
        if name == BICUBIC:
            return bicubic_model()
        return self.get(name).load(device, scales)

    def add_weights(self, name: str, arch: str, hparams: dict, state_dict: dict, *, source: dict | None = None,
                    description: str = "", license: str | None = None, provenance: str | None = None,
                    file: str | None = None) -> ModelEntry:
        """Writes one network's weights into REPO/NAME (creating or extending the entry).

        A file serving scales the entry already has replaces that file: re-importing a checkpoint
        for the same scale updates it rather than duplicating it.
        """
        if not NAME_PATTERN.match(name) or name == BICUBIC:
            raise RepositoryError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-'")
        path = self.root / name
        scales = scales_of(arch, hparams)
        if (path / "model.json").is_file():
            entry = self.get(name)
            if entry.architecture != arch:
                raise RepositoryError(f"model {name!r} is a {entry.architecture}, cannot add {arch} weights to it")
        else:
            entry = ModelEntry(name=name, path=path, architecture=arch, weights=[])
        file = file or ("weights.safetensors" if len(scales) > 1 else f"x{scales[0]}.safetensors")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, str(path / file), metadata={"architecture": arch, "hparams": json.dumps(hparams)})
        weights = WeightsFile(file=file, scales=scales, hparams=hparams, sha256=sha256_file(path / file),
                              source=source or {})
        entry.weights = [w for w in entry.weights if not set(w.scales) & set(scales) and w.file != file] + [weights]
        entry.weights.sort(key=lambda w: min(w.scales))
        entry.description = description or entry.description or get_spec(arch).description
        entry.license = license or entry.license
        entry.provenance = provenance or entry.provenance
        entry.save()
        return entry
