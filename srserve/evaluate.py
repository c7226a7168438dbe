"""The standard SR evaluation protocol over a benchmark folder (Set5, Set14, B100, ...).

Two dataset layouts are recognised:

    DIR/x{S}/HR/*, DIR/x{S}/LR/*   per-scale pairs with the same file names (../shared/datasets
                                   benchmark layout); the LR images are used as given
    DIR/HR/*                       HR only; LR = MATLAB ``imresize(hr, 1/S, 'bicubic')``, rounded

HR is mod-cropped to a multiple of the scale in both cases. With ``degrade`` (a name from
``srserve.realworld``, e.g. ``real-v1``) the LR images are instead made from the HR images by
that fixed, seeded degradation pipeline, and the result carries a SHA-256 of all of them.
The model's output is quantised to
8 bits by rounding (what a saved PNG would hold) before PSNR/SSIM on luma (``srserve.metrics``),
with ``scale`` pixels shaved from each border; the reported figures are means over images.
The bicubic baseline is MATLAB bicubic upscaling of the very same LR images.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from srserve.metrics import psnr_y, ssim_y
from srserve.models.errors import SRError
from srserve.models.imresize import imresize_uint8

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DatasetError(SRError):
    """A dataset folder that cannot be evaluated (missing, empty, mismatched pairs)."""


class EvalError(SRError):
    """An evaluation request that cannot run (scale the model lacks, unavailable device/backend)."""


@dataclass
class ImagePair:
    name: str
    hr_path: Path
    lr_path: Path | None  # None: LR generated from HR


@dataclass
class ImageResult:
    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    gray: bool = False


@dataclass
class EvalResult:
    model: str
    scale: int
    dataset: str
    lr_source: str  # "dataset" (paired layout) or "generated" (HR-only layout)
    images: int
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    self_ensemble: bool
    tile: int
    seconds: float
    per_image: list[ImageResult] = field(default_factory=list)
    lr_sha256: str | None = None  # of the degraded LR images (``degrade``), so runs can be compared

    @property
    def gain(self) -> float:
        return self.psnr - self.bicubic_psnr

    def to_json(self) -> dict:
        """JSON-safe dict: a non-finite PSNR (an exact reconstruction) becomes null."""
        return _finite_or_none(asdict(self))


def _finite_or_none(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# dataset discovery and image loading


def discover(dataset_dir: str | Path, scale: int) -> tuple[list[ImagePair], str]:
    """Image pairs of a dataset folder for one scale, and where the LR comes from."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    paired = root / f"x{scale}"
    if (paired / "HR").is_dir():
        return _paired(paired), "dataset"
    if (root / "HR").is_dir():
        return [ImagePair(p.name, p, None) for p in _images_in(root / "HR")], "generated"
    other = sorted(p.name for p in root.glob("x*") if (p / "HR").is_dir())
    if other:
        raise DatasetError(f"dataset {root} has no x{scale} folder (it has {', '.join(other)}) and no HR/ folder")
    raise DatasetError(f"dataset {root} has neither x{scale}/HR + x{scale}/LR nor HR/ (see `srserve eval --help`)")


def _paired(folder: Path) -> list[ImagePair]:
    hr_images = _images_in(folder / "HR")
    if not (folder / "LR").is_dir():
        raise DatasetError(f"{folder / 'HR'} has no sibling LR folder {folder / 'LR'}")
    pairs = []
    for hr in hr_images:
        lr = folder / "LR" / hr.name
        if not lr.is_file():
            raise DatasetError(f"{hr} has no LR counterpart {lr}")
        pairs.append(ImagePair(hr.name, hr, lr))
    return pairs


def _images_in(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def read_image(path: Path) -> np.ndarray:
    """8-bit H×W (gray) or H×W×3 (RGB) array; alpha and palettes are dropped, deeper images refused."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise DatasetError(f"{path} is a {im.mode} image; evaluation needs 8-bit images")
            if im.mode in ("1", "LA"):
                im = im.convert("L")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises several types for unreadable files
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def as_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


def load_pair(pair: ImagePair, scale: int, degradation=None) -> tuple[np.ndarray, np.ndarray]:
    """(HR mod-cropped, LR RGB uint8); HR stays 2-D for gray images (see srserve.metrics).
    ``degradation`` (a ``srserve.realworld.RealWorldDegradation``) makes the LR from the HR."""
    hr = mod_crop(read_image(pair.hr_path), scale)
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise DatasetError(f"{pair.hr_path} is smaller than the scale {scale}")
    if degradation is not None:
        return hr, as_rgb(degradation.apply(hr, scale, pair.name))
    if pair.lr_path is None:
        return hr, as_rgb(imresize_uint8(hr, 1 / scale))
    lr = read_image(pair.lr_path)
    expected = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != expected:
        raise DatasetError(
            f"{pair.lr_path} is {lr.shape[1]}×{lr.shape[0]} but its HR {pair.hr_path} (mod-cropped to "
            f"{hr.shape[1]}×{hr.shape[0]}) needs {expected[1]}×{expected[0]} at x{scale}"
        )
    return hr, as_rgb(lr)


# ---------------------------------------------------------------------------------------------
# running models


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: MATLAB ``imresize(lr, scale, 'bicubic')`` on uint8, rounded."""
    return imresize_uint8(lr, scale)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1×3×H×W in [0, 1] -> H×W×3 uint8, rounded like a saved 8-bit image."""
    return x[0].mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def check_scale(backend, scale: int) -> None:
    model = backend.model
    if scale not in model.scales:
        served = model.entry.scales if model.entry is not None else model.scales
        raise EvalError(f"model {model.name!r} serves scales {served}, not x{scale}")


def evaluate(backend, dataset_dir: str | Path, scale: int, self_ensemble: bool = False, tile: int = 0,
             progress: bool = True, degrade: str | None = None) -> EvalResult:
    """Runs ``backend`` over a dataset at one scale and scores it against HR and bicubic.
    ``degrade``: make the LR images with that ``srserve.realworld`` pipeline (e.g. ``real-v1``)."""
    from tqdm import tqdm

    from srserve.pipeline import upscale_tensor
    from srserve.realworld import get_degradation

    scale = int(scale)
    degradation = get_degradation(degrade) if degrade else None
    check_scale(backend, scale)
    pairs, lr_source = discover(dataset_dir, scale)
    if degradation is not None:
        lr_source = degradation.name
    lr_digest = hashlib.sha256()
    start = time.perf_counter()
    results = []
    bar = tqdm(pairs, desc=f"{backend.model.name} x{scale}", unit="img", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty())
    for pair in bar:
        hr, lr = load_pair(pair, scale, degradation)
        lr_digest.update(lr.tobytes())
        sr = to_uint8(upscale_tensor(backend, to_tensor(lr), scale, self_ensemble=self_ensemble, tile=tile))
        results.append(score_image(pair.name, sr, bicubic_upscale(lr, scale), hr, scale))
    return EvalResult(
        model=backend.model.name, scale=scale, dataset=str(dataset_dir), lr_source=lr_source, images=len(results),
        psnr=_mean(r.psnr for r in results), ssim=_mean(r.ssim for r in results),
        bicubic_psnr=_mean(r.bicubic_psnr for r in results), bicubic_ssim=_mean(r.bicubic_ssim for r in results),
        self_ensemble=self_ensemble, tile=tile, seconds=time.perf_counter() - start, per_image=results,
        lr_sha256=lr_digest.hexdigest() if degradation is not None else None,
    )


def score_image(name: str, sr: np.ndarray, bicubic: np.ndarray, hr: np.ndarray, scale: int) -> ImageResult:
    if sr.shape[:2] != hr.shape[:2]:
        raise EvalError(f"{name}: the model returned {sr.shape[1]}×{sr.shape[0]}, expected {hr.shape[1]}×{hr.shape[0]}")
    try:
        return ImageResult(
            name=name, psnr=psnr_y(sr, hr, scale), ssim=ssim_y(sr, hr, scale),
            bicubic_psnr=psnr_y(bicubic, hr, scale), bicubic_ssim=ssim_y(bicubic, hr, scale), gray=hr.ndim == 2,
        )
    except ValueError as exc:  # e.g. smaller than the SSIM window once shaved
        raise DatasetError(f"{name}: {exc}") from None


def _mean(values) -> float:
    return float(np.mean(list(values)))
