"""Producing artifacts: ONNX graphs (parity-checked), TensorRT engines, a Triton repository."""
from .builder import ExportBuilder

__all__ = ["ExportBuilder"]
