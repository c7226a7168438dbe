"""ITU-R BT.601 studio-range YCbCr, as MATLAB's rgb2ycbcr/ycbcr2rgb (values in [0, 1])."""
from __future__ import annotations

import torch

_RGB_TO_YCBCR = torch.tensor(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=torch.float64
) / 255.0
_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(x.dtype).to(x.device), x)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB in [0, 1] -> N×3×H×W YCbCr in [0, 1] (Y in [16, 235]/255)."""
    return _apply(_RGB_TO_YCBCR, x) + _OFFSET.to(x.dtype).to(x.device).view(1, 3, 1, 1)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return _apply(_YCBCR_TO_RGB, x - _OFFSET.to(x.dtype).to(x.device).view(1, 3, 1, 1))
