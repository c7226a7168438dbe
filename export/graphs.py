"""The modules that are exported: ``SRNet`` with its inputs spelled out, and its variants.

* ``SRGraph``: image (N×3×h×w, [0, 1]) [+ degradation N×256 for DASR] -> N×3×sh×sw. It is the
  models' own ``SRNet`` (value range, VDSR's YCbCr + MATLAB bicubic, RRDBNet's pixel-unshuffle
  padding and crop all inside), on a copy in which DASR's per-sample grouped convolution is
  rewritten batch-size-free (``ArchSpec.export_rewrite``, models/dasr/export.py).
* ``EnsembleGraph``: the geometric self-ensemble ×8 inside one graph (unclamped mean).
* ``DegradationGraph``: DASR's encoder, image -> N×256.
* ``HalfPrecision``: any of the above computing in fp16 (bf16 for the compiled engine) with fp32
  inputs and outputs, so every artifact has the same interface and the fp32 fallback is a drop-in.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from srserve.models.adapter import SRNet


class SRGraph(nn.Module):
    def __init__(self, srnet: nn.Module):
        super().__init__()
        self.net = srnet.spec.export_rewrite(copy.deepcopy(srnet).eval())
        self.scale = int(srnet.scale)
        self.needs_degradation = bool(getattr(srnet, "needs_degradation", False))

    def forward(self, image: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(image, degradation)


def _flips(x: torch.Tensor) -> torch.Tensor:
    """The 4 flips (none, W, H, HW) of a batch, stacked along the batch axis."""
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)], dim=0)


def _unflip_sum(y: torch.Tensor, n: int) -> torch.Tensor:
    """Undoes ``_flips`` on a 4N batch and sums the four groups of N."""
    a, fw, fh, fhw = y[:n], y[n:2 * n], y[2 * n:3 * n], y[3 * n:]
    return a + fw.flip(-1) + fh.flip(-2) + fhw.flip(-2, -1)


class EnsembleGraph(nn.Module):
    """Mean of the network over the 8 transforms of the dihedral group, undone.

    Two network passes of 4N images each (the 4 flips of x, the 4 flips of xᵀ) rather than 8 of
    N: bigger batches for the accelerator and a graph half the size; the transposed group has
    its own shape, so a non-square input still works.

    ``align`` > 1 (RRDBNet ×2/×1): the input is first reflect-padded at the bottom/right to a
    multiple of ``align`` and the output cropped, as the pipeline does before transforming, so
    every transform sees the same pixels (a flipped odd-sized input would otherwise be padded
    on the other side inside the network).
    """

    def __init__(self, graph: SRGraph, align: int = 1):
        super().__init__()
        self.graph = graph
        self.scale = graph.scale
        self.align = int(align)
        self.needs_degradation = graph.needs_degradation

    def _group(self, x: torch.Tensor, degradation: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[0]
        deg = None if degradation is None else degradation.repeat(4, 1)
        return _unflip_sum(self.graph(_flips(x), deg), n)

    def forward(self, image: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        h, w = image.shape[-2:]
        if self.align > 1:
            image = F.pad(image, (0, (-w) % self.align, 0, (-h) % self.align), mode="reflect")
        plain = self._group(image, degradation)
        transposed = self._group(image.transpose(-2, -1), degradation).transpose(-2, -1)
        out = (plain + transposed) / 8.0
        return out[..., : h * self.scale, : w * self.scale] if self.align > 1 else out


class DegradationGraph(nn.Module):
    """DASR's degradation encoder on an RGB [0, 1] image: N×3×h×w -> N×256."""

    def __init__(self, srnet: SRNet):
        super().__init__()
        self.net = copy.deepcopy(srnet).eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.estimate_degradation(image)


class HalfPrecision(nn.Module):
    """fp16 (or ``dtype``: bf16 for the compiled engine) inside, fp32 at the inputs and the output.

    The wrapped module is ``network``, not ``graph``: ``torch.export`` turns the module into an
    ``fx.GraphModule``, whose ``graph`` attribute would hide a submodule of that name."""

    def __init__(self, graph: nn.Module, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.dtype = dtype
        self.network = copy.deepcopy(graph).to(dtype)
        self.scale = getattr(graph, "scale", None)
        self.needs_degradation = getattr(graph, "needs_degradation", False)

    def forward(self, image: torch.Tensor, degradation: torch.Tensor | None = None) -> torch.Tensor:
        if degradation is None:
            return self.network(image.to(self.dtype)).float()
        return self.network(image.to(self.dtype), degradation.to(self.dtype)).float()
