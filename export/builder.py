"""What the runtime backends ask of the exporter when an artifact is missing (``ArtifactBuilder``)."""
from __future__ import annotations

from pathlib import Path

from srserve.backends.artifacts import Artifact
from srserve.models.repository import LoadedModel


class ExportBuilder:
    """Exports missing ONNX graphs (parity-checked, as ``srserve export``), builds TensorRT
    engines and AOTInductor packages on first use; pass it to
    ``srserve.backends.create_backend(builder=...)``."""

    def onnx_graph(self, model: LoadedModel, kind: str, scale: int, precision: str, folder: Path) -> Artifact:
        from .onnx_export import GraphJob, export_artifact

        return export_artifact(model, GraphJob(kind, int(scale), precision), folder)

    def tensorrt_engine(self, model: LoadedModel, scale: int, precision: str, *, cache_root: Path, **options):
        from .tensorrt import EngineCache, load_engine

        return load_engine(model, scale, precision, cache=EngineCache(Path(cache_root) / "tensorrt"), **options)

    def compiled_package(self, model: LoadedModel, scale: int, precision: str, *, cache_root: Path, **options):
        from .aoti import aoti_cache, load_compiled

        return load_compiled(model, scale, precision, cache=aoti_cache(cache_root), **options)
