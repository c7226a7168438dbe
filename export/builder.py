"""What the runtime backends ask of the exporter when an artifact is missing (``ArtifactBuilder``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from srserve.backends.artifacts import Artifact
from srserve.models.repository import LoadedModel


class ExportBuilder:
    """Exports missing ONNX graphs (parity-checked, as ``srserve export``), builds TensorRT
    engines and AOTInductor packages on first use, and checks other engines' compiled graphs against
    PyTorch; pass it to ``srserve.backends.create_backend(builder=...)``."""

    def __init__(self):
        from .onnx_export import References

        self.references = References()  # PyTorch's outputs, shared by an export's and its engines' checks

    def onnx_graph(self, model: LoadedModel, kind: str, scale: int, precision: str, folder: Path) -> Artifact:
        from .onnx_export import GraphJob, export_artifact

        return export_artifact(model, GraphJob(kind, int(scale), precision), folder, references=self.references)

    def tensorrt_engine(self, model: LoadedModel, scale: int, precision: str, *, cache_root: Path, **options):
        from .tensorrt import EngineCache, load_engine

        return load_engine(model, scale, precision, cache=EngineCache(Path(cache_root) / "tensorrt"), **options)

    def compiled_package(self, model: LoadedModel, scale: int, precision: str, *, cache_root: Path, **options):
        from .aoti import aoti_cache, load_compiled

        return load_compiled(model, scale, precision, cache=aoti_cache(cache_root), **options)

    def check_parity(self, model: LoadedModel, kind: str, scale: int, precision: str,
                     run: Callable[[dict], torch.Tensor]) -> dict:
        """Parity of ``run`` (input name -> tensor, to the output) with PyTorch, by the export
        criteria for ``precision`` (fp32: one 8-bit level; reduced: finite and a few levels), with
        a one-line ``summary``."""
        from .onnx_export import GraphJob, check_parity_with, summarize_parity

        parity = check_parity_with(model, GraphJob(kind, int(scale), precision), run, references=self.references)
        return {**parity, "summary": summarize_parity(parity)}
