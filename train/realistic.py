"""Real-ESRGAN's second-order degradation pipeline, batched in torch.

HR batch (N×3×H×W in [0, 1]) -> LR batch (N×3×H/s×W/s, quantised to 8 bits):

    round 1:  blur -> random resize -> noise -> JPEG
    round 2:  blur (with ``blur_prob``) -> random resize -> noise
    final:    in random order, [resize to H/s × W/s + sinc filter] and [JPEG of round 2]

- **blur**: one 21×21 kernel per sample whose support is a random odd size in ``kernel_size``:
  isotropic / anisotropic Gaussian, generalised Gaussian (exp(−½·q^β), β ~ ``betag``), plateau
  (1 / (1 + q^β), β ~ ``betap``), q = xᵀΣ⁻¹x (the kernel family of ``train/degradation.py``), or,
  with ``sinc_prob``, a circular low-pass (sinc) kernel that makes ringing and overshoot
  artefacts; every kernel sums to 1;
- **resize**: up / down / keep with ``resize_probs``, factor ~ U(``resize_range``) (round 1
  relative to the HR size, later rounds relative to the LR size), one of area / bilinear /
  bicubic (uniformly, as Real-ESRGAN, or with ``resize_mode_probs``; the final resize to the LR
  size uses the last round's); one draw per batch (the samples must keep one size). Real-ESRGAN downscales without
  antialiasing (aliased LR); ``antialias: true`` low-pass filters bilinear/bicubic downscales as
  image editors do (bicubic then equals MATLAB ``imresize``, the evaluation's LR);
- **noise**: Gaussian (σ ~ ``noise_sigma`` on the 0-255 scale) with ``gaussian_noise_prob``,
  otherwise Poisson (counts of x·255, the residual times ``poisson_scale``); gray (one plane for
  all channels, from the luma for Poisson) with ``gray_noise_prob``; per sample; then clamped;
- **JPEG**: per-sample quality ~ U{``jpeg_quality``}; ``jpeg: pillow`` through Pillow
  (``srserve.realworld``, exact libjpeg, per sample on the CPU), ``jpeg: torch`` batched on the
  batch's device (``train/jpeg.py``, libjpeg's algorithm in floating point: the same PSNR within
  0.01 dB), ``auto`` (default) torch for batches on a GPU and Pillow on the CPU (exact there,
  and about as fast: BENCHMARKS.md);
- **final sinc** with ``final_sinc_prob`` (ω ~ U[π/3, π]); other samples get the identity.

Every random draw comes from the ``torch.Generator`` passed in (parameters on its device; the
per-pixel noise on the batch's device, from a generator seeded by one draw of it), so a seed
fixes the batch; the drawn parameters are returned with it so tests can check each stage.
Defaults are Real-ESRGAN's; a config overrides them in ``data.degradation`` (see
``train/configs/realesrnet.yaml``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from srserve.realworld import jpeg_roundtrip

from .degradation import blur, kernel_grid, normalise, quadratic_form
from .jpeg import jpeg_torch

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
JPEG_ENGINES = ("auto", "pillow", "torch")
MAX_KERNEL = 21


@dataclass(frozen=True)
class Round:
    """The ranges and probabilities of one degradation round (noise σ on the 0-255 scale)."""

    blur_prob: float = 1.0
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # in KERNEL_TYPES order
    sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_mode_probs: tuple[float, float, float] | None = None  # in RESIZE_MODES order; None: uniform
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


SECOND_ROUND = Round(blur_prob=0.8, sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
                     noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))


@dataclass(frozen=True)
class RealisticDegradation:
    rounds: tuple[Round, ...] = (Round(), SECOND_ROUND)
    kernel_size: tuple[int, int] = (7, MAX_KERNEL)  # odd sizes, inclusive
    final_sinc_prob: float = 0.8
    antialias: bool = False  # bilinear/bicubic downscales low-pass first (Real-ESRGAN: no)
    jpeg: str = "auto"  # pillow | torch | auto (torch on a GPU: Pillow would starve it)

    @classmethod
    def from_config(cls, settings: dict | None) -> "RealisticDegradation":
        """``{rounds: [{...}, {...}], kernel_size: [7, 21], final_sinc_prob: 0.8}``; a round's
        missing keys keep the default of that round."""
        settings = dict(settings or {})
        defaults = cls()
        rounds = settings.pop("rounds", None)
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown degradation settings {sorted(unknown)}")
        if rounds is not None:
            if len(rounds) < 1:
                raise ValueError("degradation.rounds needs at least one round")
            base = [*defaults.rounds, *[defaults.rounds[-1]] * len(rounds)]
            settings["rounds"] = tuple(_round(base[i], r) for i, r in enumerate(rounds))
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        config = replace(defaults, **settings)
        if config.jpeg not in JPEG_ENGINES:
            raise ValueError(f"degradation.jpeg must be one of {JPEG_ENGINES}, got {config.jpeg!r}")
        if not (3 <= config.kernel_size[0] <= config.kernel_size[1] <= MAX_KERNEL):
            raise ValueError(f"kernel_size must lie within [3, {MAX_KERNEL}], got {config.kernel_size}")
        return config

    def __call__(self, hr: torch.Tensor, scale: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return degrade(hr, scale, self, generator)


def _round(base: Round, settings: dict) -> Round:
    unknown = set(settings) - {f.name for f in fields(Round)}
    if unknown:
        raise ValueError(f"unknown degradation round settings {sorted(unknown)}")
    rnd = replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    if rnd.resize_mode_probs is not None and len(rnd.resize_mode_probs) != len(RESIZE_MODES):
        raise ValueError(f"resize_mode_probs needs {len(RESIZE_MODES)} probabilities ({', '.join(RESIZE_MODES)}), "
                         f"got {list(rnd.resize_mode_probs)}")
    return rnd


# --- random draws ------------------------------------------------------------------------------
def uniform(n: int, bounds, generator: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device).cpu()


def bernoulli(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).cpu() < p


def choice(n: int, probs, generator: torch.Generator) -> torch.Tensor:
    weights = torch.tensor(probs, dtype=torch.float32, device=generator.device)
    return torch.multinomial(weights, n, replacement=True, generator=generator).cpu()


def resize_mode(probs, generator: torch.Generator) -> str:
    """One of RESIZE_MODES: uniform when ``probs`` is None (Real-ESRGAN; the draw stays the one
    earlier runs made, so their seeds still give the same batches), else with ``probs``."""
    if probs is None:
        return RESIZE_MODES[int(torch.randint(len(RESIZE_MODES), (1,), generator=generator, device=generator.device))]
    return RESIZE_MODES[int(choice(1, probs, generator))]


def odd_sizes(n: int, bounds: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    lo, hi = bounds[0] + 1 - bounds[0] % 2, bounds[1]  # the smallest odd size ≥ bounds[0]
    count = (hi - lo) // 2 + 1
    return lo + 2 * torch.randint(count, (n,), generator=generator, device=generator.device).cpu()


# --- kernels -----------------------------------------------------------------------------------
def support_mask(sizes: torch.Tensor, grid: int = MAX_KERNEL) -> torch.Tensor:
    """N×grid×grid masks of the central sizes[i]×sizes[i] window."""
    yy, xx = kernel_grid(grid)
    half = (sizes.float()[:, None, None] - 1) / 2
    return ((yy.abs() <= half) & (xx.abs() <= half)).float()


def sinc_kernels(omega: torch.Tensor, sizes: torch.Tensor, grid: int = MAX_KERNEL) -> torch.Tensor:
    """Circular low-pass kernels: the ideal 2-D filter with cut-off ω (radians per pixel),
    ω·J1(ω·r) / (2π·r), cut to ``sizes`` and normalised; its side lobes go negative, which is
    what makes ringing."""
    yy, xx = kernel_grid(grid)
    r = torch.sqrt(xx**2 + yy**2)[None]
    w = omega[:, None, None]
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    k = torch.where(r == 0, w**2 / (4 * math.pi), w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r))
    return normalise(k * support_mask(sizes, grid))


def family_kernels(types: torch.Tensor, rnd: Round, sizes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Gaussian-family kernels of the given type indices (KERNEL_TYPES), one per sample."""
    n = len(types)
    sx, sy = uniform(n, rnd.sigma, generator), uniform(n, rnd.sigma, generator)
    theta = uniform(n, (0.0, math.pi), generator)
    betag, betap = uniform(n, rnd.betag, generator), uniform(n, rnd.betap, generator)
    isotropic = types % 2 == 0
    sy = torch.where(isotropic, sx, sy)
    theta = torch.where(isotropic, torch.zeros_like(theta), theta)
    q = quadratic_form(sx, sy, theta, MAX_KERNEL)
    family = types // 2  # 0 Gaussian, 1 generalised Gaussian, 2 plateau
    beta = torch.where(family == 1, betag, betap)[:, None, None]
    k = torch.where((family == 0)[:, None, None], torch.exp(-0.5 * q),
                    torch.where((family == 1)[:, None, None], torch.exp(-0.5 * q.pow(beta)), 1 / (1 + q.pow(beta))))
    params = {"sigma_x": sx, "sigma_y": sy, "theta": theta, "beta": torch.where(family == 0, torch.zeros_like(beta[:, 0, 0]), beta[:, 0, 0])}
    return normalise(k * support_mask(sizes)), params


def blur_kernels(n: int, rnd: Round, kernel_size: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """N×21×21 kernels of one round: sinc with ``sinc_prob``, else a drawn Gaussian-family type."""
    sizes = odd_sizes(n, kernel_size, generator)
    use_sinc = bernoulli(n, rnd.sinc_prob, generator)
    types = choice(n, rnd.kernel_probs, generator)
    # Real-ESRGAN's cut-off range: wider for large kernels, which can hold low cut-offs
    omega = torch.where(sizes < 13, uniform(n, (math.pi / 3, math.pi), generator), uniform(n, (math.pi / 5, math.pi), generator))
    family, params = family_kernels(types, rnd, sizes, generator)
    kernels = torch.where(use_sinc[:, None, None], sinc_kernels(omega, sizes), family)
    return kernels, {"size": sizes, "sinc": use_sinc, "type": types, "omega": omega, **params}


def identity_kernel(n: int) -> torch.Tensor:
    k = torch.zeros(n, MAX_KERNEL, MAX_KERNEL)
    k[:, MAX_KERNEL // 2, MAX_KERNEL // 2] = 1
    return k


# --- stages ------------------------------------------------------------------------------------
def random_resize(x: torch.Tensor, rnd: Round, base: tuple[int, int], generator: torch.Generator,
                  antialias: bool = False) -> tuple[torch.Tensor, dict]:
    """Resizes the whole batch to ``base`` × a factor drawn up (> 1) / down (< 1) / keep (1)."""
    direction = int(choice(1, rnd.resize_probs, generator))
    lo, hi = rnd.resize_range
    factor = [float(uniform(1, (1.0, hi), generator)), float(uniform(1, (lo, 1.0), generator)), 1.0][direction]
    mode = resize_mode(rnd.resize_mode_probs, generator)
    size = (max(1, int(base[0] * factor)), max(1, int(base[1] * factor)))
    return resize(x, size, mode, antialias), {"direction": ("up", "down", "keep")[direction], "factor": factor, "mode": mode, "size": size}


def resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    options = {} if mode == "area" else {"align_corners": False, "antialias": antialias}
    return F.interpolate(x, size=size, mode=mode, **options)


def luma(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W BT.601 luma weights (full range) of N×3×H×W RGB."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def add_noise(x: torch.Tensor, rnd: Round, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Gaussian or Poisson noise per sample, colour or gray; the result is clamped to [0, 1]."""
    n, c, h, w = x.shape
    gaussian = bernoulli(n, rnd.gaussian_noise_prob, generator)
    gray = bernoulli(n, rnd.gray_noise_prob, generator)
    sigma = uniform(n, rnd.noise_sigma, generator)
    pscale = uniform(n, rnd.poisson_scale, generator)
    # The per-pixel draws happen where the batch is (on a GPU, not pixel by pixel on the CPU) from a
    # generator seeded by one draw of the main one, so the later draws never depend on the pixels
    # (Poisson sampling consumes a number of draws that does) and a seed still fixes the batch.
    pixels = torch.Generator(device=x.device).manual_seed(int(torch.randint(2**62, (1,), generator=generator,
                                                                            device=generator.device)))
    normal = torch.randn((n, c, h, w), generator=pixels, device=x.device, dtype=x.dtype)
    normal = torch.where(gray.to(x.device)[:, None, None, None], normal[:, :1].expand(-1, c, -1, -1), normal)
    noise = normal * (sigma.to(x) / 255).view(-1, 1, 1, 1)
    poisson = ~gaussian
    if bool(poisson.any()):  # only the samples that use it
        rows = poisson.to(x.device)
        gray_rows = gray[poisson].to(x.device)[:, None, None, None]
        base = torch.where(gray_rows, luma(x[rows]).expand(-1, c, -1, -1), x[rows]).clamp(0, 1)
        counts = torch.poisson(base.mul(255), generator=pixels)
        counts = torch.where(gray_rows, counts[:, :1].expand(-1, c, -1, -1), counts)  # gray: one plane for all
        noise[rows] = (counts / 255 - base) * pscale[poisson].to(x).view(-1, 1, 1, 1)
    return (x + noise).clamp(0, 1), {"gaussian": gaussian, "gray": gray, "sigma": sigma, "poisson_scale": pscale}


def jpeg(x: torch.Tensor, qualities: torch.Tensor, engine: str = "pillow") -> torch.Tensor:
    """Per-sample JPEG round trip of N×3×H×W in [0, 1] at the given qualities (``engine``: see
    the module docstring)."""
    if engine == "torch" or (engine == "auto" and x.device.type != "cpu"):
        return jpeg_torch(x, qualities)
    images = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([jpeg_roundtrip(img, int(q)) for img, q in zip(images, qualities)])
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).float().div(255)


def jpeg_qualities(n: int, rnd: Round, generator: torch.Generator) -> torch.Tensor:
    lo, hi = rnd.jpeg_quality
    return lo + torch.randint(hi - lo + 1, (n,), generator=generator, device=generator.device).cpu()


def degrade(hr: torch.Tensor, scale: int, config: RealisticDegradation, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The whole pipeline; returns the LR batch and, per round, the parameters drawn."""
    n, _, h, w = hr.shape
    lr_size = (h // scale, w // scale)
    x = hr
    log: dict = {"rounds": []}
    for i, rnd in enumerate(config.rounds):
        last = i == len(config.rounds) - 1
        step: dict = {}
        applies = bernoulli(n, rnd.blur_prob, generator)
        kernels, step["blur"] = blur_kernels(n, rnd, config.kernel_size, generator)
        step["blur"]["applied"] = applies
        x = blur(x, torch.where(applies[:, None, None], kernels, identity_kernel(n)))
        x, step["resize"] = random_resize(x, rnd, (h, w) if i == 0 else lr_size, generator, config.antialias)
        x, step["noise"] = add_noise(x, rnd, generator)
        step["jpeg_quality"] = jpeg_qualities(n, rnd, generator)
        if not last:
            x = jpeg(x, step["jpeg_quality"], config.jpeg)
        log["rounds"].append(step)
    x, log["final"] = final_stage(x, lr_size, config, log["rounds"][-1]["jpeg_quality"], generator)
    return x.clamp(0, 1).mul(255).round().div(255), log


def final_stage(x: torch.Tensor, lr_size: tuple[int, int], config: RealisticDegradation, qualities: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """[resize to the LR size + sinc] and JPEG, in a random order (Real-ESRGAN's last step)."""
    n = x.shape[0]
    use_sinc = bernoulli(n, config.final_sinc_prob, generator)
    sizes = odd_sizes(n, config.kernel_size, generator)
    omega = uniform(n, (math.pi / 3, math.pi), generator)
    kernels = torch.where(use_sinc[:, None, None], sinc_kernels(omega, sizes), identity_kernel(n))
    mode = resize_mode(config.rounds[-1].resize_mode_probs, generator)
    jpeg_first = bool(bernoulli(1, 0.5, generator))
    if jpeg_first:
        x = jpeg(x, qualities, config.jpeg)
    x = blur(resize(x, lr_size, mode, config.antialias), kernels)
    if not jpeg_first:
        x = jpeg(x, qualities, config.jpeg)
    return x, {"sinc": use_sinc, "size": sizes, "omega": omega, "mode": mode, "jpeg_first": jpeg_first}
