"""Training data: HR folders, MATLAB-bicubic LR (cached), random aligned patches, augmentation.

All images are held in memory (the 400 BSDS images are ~190 MB as uint8) and batches are
assembled in the training process: on 2 CPU cores worker processes would only take cores away
from the model. On a GPU the uint8 images live on the device and patches are cut, augmented and
converted there, so no host-to-device copy or host work stands between two steps.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from srserve.models.imresize import imresize_uint8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def expand_path(path: str) -> Path:
    """Expands ``${SR_DATASETS}`` (default ``../shared/datasets``) and ``~`` in config paths."""
    datasets = os.environ.get("SR_DATASETS", "../shared/datasets")
    return Path(os.path.expanduser(path.replace("${SR_DATASETS}", datasets)))


def list_images(folders: list[str]) -> list[Path]:
    files = []
    for folder in folders:
        root = expand_path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"training folder {root} does not exist")
        files += sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folders}")
    return files


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _cache_key(files: list[Path], scale: int) -> str:
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f}:{f.stat().st_size}:{scale}".encode())
    return digest.hexdigest()[:16]


def make_lr_images(hr: list[np.ndarray], files: list[Path], scale: int, cache_dir: Path | None) -> list[np.ndarray]:
    """MATLAB-bicubic LR of every (mod-cropped) HR image, cached as one .npz per scale."""
    cache = cache_dir / f"lr_x{scale}_{_cache_key(files, scale)}.npz" if cache_dir else None
    if cache and cache.is_file():
        with np.load(cache) as z:
            return [z[f"a{i}"] for i in range(len(hr))]
    lr = [imresize_uint8(modcrop(img, scale), 1 / scale) for img in tqdm(hr, desc=f"LR x{scale}", leave=False)]
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # runs in parallel may build the same cache
        np.savez(tmp, **{f"a{i}": a for i, a in enumerate(lr)})
        tmp.replace(cache)
    return lr


def augment(arrays: list, rng: np.random.Generator) -> list:
    """The same random flip/flip/transpose (the 8 dihedral transforms) on aligned H×W×C patches
    (NumPy arrays or device tensors; the same random draws either way)."""
    hflip, vflip, transpose = rng.random(3) < 0.5
    out = []
    for a in arrays:
        on_device = isinstance(a, torch.Tensor)
        if hflip:
            a = a.flip(1) if on_device else a[:, ::-1]
        if vflip:
            a = a.flip(0) if on_device else a[::-1]
        if transpose:
            a = a.permute(1, 0, 2) if on_device else a.transpose(1, 0, 2)
        out.append(a)
    return out


def to_tensor(batch: list) -> torch.Tensor:
    """uint8 H×W×C patches (NumPy or device tensors) -> float N×C×H×W in [0, 1], where they are."""
    if isinstance(batch[0], torch.Tensor):
        return torch.stack(batch).permute(0, 3, 1, 2).float().div_(255)
    return torch.from_numpy(np.ascontiguousarray(np.stack(batch))).permute(0, 3, 1, 2).float().div_(255)


class PatchSampler:
    """Random aligned (LR, HR) patch pairs for given scales.

    ``device``: keep the uint8 images there (a GPU) and build batches on it; ``None`` keeps them
    in host memory as NumPy arrays.
    """

    def __init__(self, folders: list[str], scales: list[int], lr_patch: int, augment: bool = True,
                 cache_dir: str | None = "runs/cache", limit: int | None = None, seed: int = 0,
                 device: torch.device | str | None = None):
        self.files = list_images(folders)[:limit]
        self.hr = [load_rgb(f) for f in tqdm(self.files, desc="loading HR", leave=False)]
        self.lr = {s: make_lr_images(self.hr, self.files, s, Path(cache_dir) if cache_dir else None) for s in scales}
        if device is not None:
            self.hr = [torch.tensor(a, device=device) for a in self.hr]  # a copy: the arrays may be read-only
            self.lr = {s: [torch.tensor(a, device=device) for a in images] for s, images in self.lr.items()}
        self.lr_patch = lr_patch
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def pair(self, index: int, scale: int, lr_patch: int | None = None, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """LR patch of ``lr_patch + 2*margin`` (context on every side) and the HR patch aligned
        with its inner ``lr_patch`` part."""
        p = lr_patch or self.lr_patch
        lr = self.lr[scale][index]
        y = int(self.rng.integers(margin, lr.shape[0] - p - margin + 1))
        x = int(self.rng.integers(margin, lr.shape[1] - p - margin + 1))
        lr_patch_ = lr[y - margin: y + p + margin, x - margin: x + p + margin]
        hr_patch = self.hr[index][y * scale: (y + p) * scale, x * scale: (x + p) * scale]
        if self.augment:
            lr_patch_, hr_patch = augment([lr_patch_, hr_patch], self.rng)
        return lr_patch_, hr_patch

    def batch(self, size: int, scale: int, lr_patch: int | None = None, margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.pair(int(self.rng.integers(len(self.hr))), scale, lr_patch, margin) for _ in range(size)]
        return to_tensor([p[0] for p in pairs]), to_tensor([p[1] for p in pairs])

    def hr_batch(self, size: int, hr_patch: int, per_image: int = 1) -> torch.Tensor:
        """``per_image`` random HR crops from each of ``size`` random images (DASR: positives)."""
        crops = []
        for _ in range(size):
            img = self.hr[int(self.rng.integers(len(self.hr)))]
            for _ in range(per_image):
                y = int(self.rng.integers(0, img.shape[0] - hr_patch + 1))
                x = int(self.rng.integers(0, img.shape[1] - hr_patch + 1))
                crop = img[y: y + hr_patch, x: x + hr_patch]
                crops.append(augment([crop], self.rng)[0] if self.augment else crop)
        return to_tensor(crops)

    def rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
