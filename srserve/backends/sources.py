"""Where the graph-based backends get their graphs: trusted artifacts, else a builder.

Lookup order for a graph (kind, scale, precision): the model's repository folder (written by
``srserve export``), then the cache (``$SR_ENGINE_CACHE/onnx/NAME``). An artifact is used only if
``ExportIndex.usable`` accepts it (file present, sha256 as recorded, exported from the current
weights). When neither has one, an ``ArtifactBuilder`` (``srserve.export.ExportBuilder``: the
same parity check as ``srserve export``) writes it into the cache — the repository may be a
read-only mount, and a stale graph must never run. Without a builder a one-line error says
what to run. The builder is passed in, not imported: the runtime never depends on the exporter.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol

import torch

from srserve.models.repository import LoadedModel

from .artifacts import Artifact, ExportIndex, artifact_file, default_cache_dir, weights_identity
from .base import BackendError

log = logging.getLogger("srserve.backends")


class ArtifactBuilder(Protocol):
    """What the runtime asks of the exporter when an artifact is missing."""

    def onnx_graph(self, model: LoadedModel, kind: str, scale: int, precision: str, folder: Path) -> Artifact: ...

    def tensorrt_engine(self, model: LoadedModel, scale: int, precision: str, **options): ...

    def compiled_package(self, model: LoadedModel, scale: int, precision: str, *, cache_root: Path, device,
                         max_side: int, max_batch: int, autotune: bool | None = None):
        """(runner, info): ``runner(image[, degradation])`` runs the compiled network on the device;
        ``runner.shape.accepts(shape)`` says which N×3×h×w batches it covers."""

    def check_parity(self, model: LoadedModel, kind: str, scale: int, precision: str,
                     run: Callable[[dict], torch.Tensor]) -> dict: ...


class OnnxArtifacts:
    def __init__(self, model: LoadedModel, cache_dir: str | Path | None = None, *,
                 builder: ArtifactBuilder | None = None):
        self.model = model
        self.cache_folder = Path(cache_dir or default_cache_dir()) / "onnx" / model.name
        self.builder = builder

    def folders(self) -> list[Path]:
        entry = self.model.entry
        return ([entry.path] if entry is not None else []) + [self.cache_folder]

    def find(self, kind: str, scale: int, precision: str, static_tile: int | None = None) -> tuple[Path, Artifact] | None:
        """The first usable artifact, or None (reasons are logged at debug level)."""
        identity = weights_identity(self.model, scale)
        for folder in self.folders():
            index = ExportIndex(folder, self.model.name)
            artifact, why = index.usable(kind, scale, precision, identity, static_tile)
            if artifact is not None:
                return index.path(artifact), artifact
            log.debug("%s: %s x%d %s in %s: %s", self.model.name, kind, scale, precision, folder, why)
        return None

    def available(self, kind: str, scale: int, precision: str) -> bool:
        return self.find(kind, scale, precision) is not None

    def get(self, kind: str, scale: int, precision: str) -> tuple[Path, Artifact]:
        found = self.find(kind, scale, precision)
        if found is not None:
            return found
        if self.builder is None:
            raise BackendError(f"no usable ONNX graph {artifact_file(kind, scale, precision)} for model "
                               f"{self.model.name!r}; run `srserve export --model {self.model.name} --scales {scale} "
                               f"--precision {precision}`")
        log.warning("%s: exporting %s x%d %s into %s", self.model.name, kind, scale, precision, self.cache_folder)
        artifact = self.builder.onnx_graph(self.model, kind, int(scale), precision, self.cache_folder)
        index = ExportIndex(self.cache_folder, self.model.name)
        index.add(artifact)
        return index.path(artifact), artifact
