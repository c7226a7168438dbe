"""Where the ONNX/TensorRT backends get their graphs: trusted artifacts, else an export on the fly.

Lookup order for a graph (kind, scale, precision): the model's repository folder (written by
``srserve export``), then the cache (``$SR_ENGINE_CACHE/onnx/NAME``). An artifact is used only if
``ExportIndex.usable`` accepts it (file present, sha256 as recorded, exported from the current
weights). When neither has one, the graph is exported into the cache with the same parity
check as ``srserve export`` (``export_missing=True``, the default) — the repository may be a
read-only mount, and a stale graph must never run — or a one-line error says what to run.
"""
from __future__ import annotations

import logging
from pathlib import Path

from srserve.backend import BackendError
from srserve.models.repository import LoadedModel

from ..artifacts import Artifact, ExportIndex, default_cache_dir, weights_identity
from ..onnx_export import GraphJob, export_artifact

log = logging.getLogger("srserve.export")


class OnnxArtifacts:
    def __init__(self, model: LoadedModel, cache_dir: str | Path | None = None, *, export_missing: bool = True):
        self.model = model
        self.cache_folder = Path(cache_dir or default_cache_dir()) / "onnx" / model.name
        self.export_missing = export_missing

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
        job = GraphJob(kind, int(scale), precision)
        if not self.export_missing:
            raise BackendError(f"no usable ONNX graph {job.file} for model {self.model.name!r}; run "
                               f"`srserve export --model {self.model.name} --scales {scale} --precision {precision}`")
        log.warning("%s: exporting %s on the fly into %s", self.model.name, job.file, self.cache_folder)
        artifact = export_artifact(self.model, job, self.cache_folder)
        index = ExportIndex(self.cache_folder, self.model.name)
        index.add(artifact)
        return index.path(artifact), artifact
