"""What has been exported for a model: ``REPO/NAME/exports.json`` and the artifact names.

    REPO/NAME/onnx/x4.fp32.onnx                dynamic batch/height/width
    REPO/NAME/onnx/x4.fp32.tile160.onnx        static 160×160 window (``--tile``), dynamic batch
    REPO/NAME/onnx/x4.ensemble.fp32.onnx       self-ensemble ×8 inside the graph
    REPO/NAME/onnx/x4.degradation.fp32.onnx    DASR: encoder, image -> N×256
    REPO/NAME/exports.json                     one record per artifact (``Artifact``)

A record holds what a loader needs to trust the file: its sha256, the sha256 of the weights it
was exported from (``weights_sha256``: a re-imported or retrained model makes every artifact
stale, and a stale artifact is never loaded), the graph's inputs/outputs with their dynamic axes
or static shape, the opset and the parity numbers measured against PyTorch when it was written.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from srserve.models.errors import SRError
from srserve.models.repository import LoadedModel, sha256_file

FORMAT = "srserve-exports/1"
INDEX = "exports.json"
KINDS = ("sr", "ensemble", "degradation")


def default_cache_dir() -> Path:
    """Where backends keep what they make themselves (TensorRT engines, on-the-fly ONNX graphs):
    ``$SR_ENGINE_CACHE`` (a volume in the containers), else ``~/.cache/srserve``."""
    return Path(os.environ.get("SR_ENGINE_CACHE") or Path.home() / ".cache" / "srserve")


class ExportError(SRError):
    """An export failed or an artifact is unusable (one line for the user)."""


@dataclass
class Artifact:
    file: str  # relative to the model folder
    kind: str  # "sr", "ensemble" or "degradation"
    scale: int
    precision: str  # computation precision inside the graph; inputs/outputs are always float32
    opset: int
    inputs: list[dict]  # [{"name", "shape"}]: ints are static, strings name dynamic axes
    outputs: list[dict]
    static_tile: int | None = None  # window side of a static variant, None when H/W are dynamic
    sha256: str = ""
    bytes: int = 0
    weights_sha256: str = ""
    parity: dict = field(default_factory=dict)
    exporter: str = ""
    created: str = ""

    @property
    def dynamic(self) -> bool:
        return self.static_tile is None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Artifact":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def artifact_file(kind: str, scale: int, precision: str, static_tile: int | None = None) -> str:
    """``onnx/x4.fp32.onnx``, ``onnx/x4.ensemble.fp16.tile160.onnx``, ``onnx/x4.degradation.fp32.onnx``."""
    parts = [f"x{scale}"] + ([] if kind == "sr" else [kind]) + [precision]
    if static_tile:
        parts.append(f"tile{static_tile}")
    return "onnx/" + ".".join(parts) + ".onnx"


def weights_identity(model: LoadedModel, scale: int) -> str:
    """What an artifact of ``scale`` was exported from: the weights file's sha256 (model.json),
    or a fixed name for built-in models without weights (``bicubic``)."""
    if model.entry is None:
        return f"builtin:{model.name}"
    weights = model.entry.weights_for(scale)
    return weights.sha256 or sha256_file(model.entry.path / weights.file)


class ExportIndex:
    """The artifacts recorded in ``folder/exports.json``."""

    def __init__(self, folder: str | Path, model: str):
        self.folder = Path(folder)
        self.model = model
        self.artifacts: list[Artifact] = []
        path = self.folder / INDEX
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                self.artifacts = [Artifact.from_json(a) for a in data.get("artifacts", [])]
            except (ValueError, TypeError, KeyError) as exc:
                raise ExportError(f"{path} is not a valid exports index: {exc}") from None

    def add(self, artifact: Artifact) -> None:
        """Records ``artifact``, replacing any record of the same file, and saves the index."""
        artifact.created = artifact.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.artifacts = [a for a in self.artifacts if a.file != artifact.file] + [artifact]
        self.artifacts.sort(key=lambda a: a.file)
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (INDEX + ".tmp")
        body = {"format": FORMAT, "model": self.model, "artifacts": [a.to_json() for a in self.artifacts]}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.folder / INDEX)

    def find(self, kind: str, scale: int, precision: str, static_tile: int | None = None) -> Artifact | None:
        for a in self.artifacts:
            if (a.kind, a.scale, a.precision, a.static_tile) == (kind, int(scale), precision, static_tile):
                return a
        return None

    def usable(self, kind: str, scale: int, precision: str, weights_sha256: str,
               static_tile: int | None = None) -> tuple[Artifact | None, str]:
        """The artifact if it is present, intact and exported from these weights; else why not."""
        artifact = self.find(kind, scale, precision, static_tile)
        if artifact is None:
            return None, "not exported"
        path = self.folder / artifact.file
        if not path.is_file():
            return None, f"{artifact.file} is missing"
        if artifact.weights_sha256 != weights_sha256:
            return None, f"{artifact.file} was exported from other weights (stale)"
        if sha256_file(path) != artifact.sha256:
            return None, f"{artifact.file} does not match its recorded sha256"
        return artifact, ""

    def path(self, artifact: Artifact) -> Path:
        return self.folder / artifact.file
