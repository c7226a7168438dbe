"""The CPU bf16 gate: may a model run in bf16 on the CPU without losing quality?

For one model and scale it runs a benchmark set (Set5) through OpenVINO twice, fp32 and bf16
(forced), on whole images, and compares: the mean Y-PSNR of the two (8-bit rounded outputs, the
evaluation protocol of ``srserve.evaluate``) and the largest difference between the two outputs
in 8-bit levels over every pixel and channel. It passes when bf16 loses at most ``MAX_DB`` of
PSNR (a gain is no loss; both signs are recorded) and no pixel differs by more than
``MAX_LEVELS``, which bounds how far bf16 may stray either way. The verdict, its numbers and
the bf16 scope measured (``cpu_bf16_scope``: the whole graph, or the body the architecture's
spec names) go into model.json, on the weights file serving that scale
(``WeightsFile.cpu_bf16``), where the precision policy reads them
(``srserve.backends.base.resolve_cpu_bf16``).

It must run on a CPU with native bf16 (AMX-BF16 or AVX512-BF16): elsewhere OpenVINO would run
the bf16 request in fp32 and the comparison would prove nothing, so it refuses. The CPU's model
and bf16 flags are recorded with the verdict.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srserve.backends import ArtifactBuilder, create_backend
from srserve.backends.cpu import bf16_flags, cpu_model
from srserve.evaluate import check_scale, discover, load_pair, to_tensor, to_uint8
from srserve.metrics import psnr_y
from srserve.models.errors import SRError
from srserve.models.repository import Repository, cpu_bf16_scope

MAX_DB = 0.02  # largest Y-PSNR loss, PSNR(fp32) - PSNR(bf16) on the data set, dB
MAX_LEVELS = 4  # largest |bf16 - fp32| of any pixel, 8-bit levels
CRITERION = f"Y-PSNR bf16 >= fp32 - {MAX_DB} dB and max 8-bit |bf16 - fp32| <= {MAX_LEVELS}"


class GateError(SRError):
    """The gate cannot run here (no native bf16, no OpenVINO): one line for the user."""


@dataclass
class GateResult:
    model: str
    scale: int
    dataset: str
    images: int
    psnr_fp32: float
    psnr_bf16: float
    max_levels: int
    scope: str
    engine: str
    cpu: str
    cpu_bf16: list[str]
    seconds: float
    measured: str

    @property
    def delta_db(self) -> float:
        return self.psnr_bf16 - self.psnr_fp32

    @property
    def safe(self) -> bool:
        return self.delta_db >= -MAX_DB and self.max_levels <= MAX_LEVELS

    def verdict(self) -> dict:
        """What model.json keeps for this scale."""
        return {"safe": self.safe, "criterion": CRITERION, "scope": self.scope, "dataset": Path(self.dataset).name,
                "images": self.images, "psnr_fp32": round(self.psnr_fp32, 4), "psnr_bf16": round(self.psnr_bf16, 4),
                "delta_db": round(self.delta_db, 4), "max_levels": self.max_levels, "engine": self.engine,
                "cpu": self.cpu, "cpu_bf16": self.cpu_bf16, "measured": self.measured}


def require_native_bf16() -> list[str]:
    flags = bf16_flags()
    if not flags:
        raise GateError(f"this CPU ({cpu_model()}) has no native bf16 (AMX-BF16 or AVX512-BF16): OpenVINO would "
                        "run bf16 as fp32 and the gate would prove nothing; run it on a CPU that has one")
    return flags


def measure_cpu_bf16(repository: Repository, name: str, scale: int, dataset: str | Path, *,
                     builder: ArtifactBuilder, cache_dir: str | Path | None = None, threads: int | None = None,
                     progress: bool = False) -> GateResult:
    """Set5-style comparison of OpenVINO bf16 with fp32 for ``name`` at ``scale`` (module doc)."""
    from tqdm import tqdm

    from srserve.pipeline import upscale_tensor

    flags = require_native_bf16()
    model = repository.load(name, "cpu", [scale])
    common = dict(device="cpu", cache_dir=cache_dir, builder=builder, threads=threads, force_precision=True)
    fp32 = create_backend(model, "openvino", precision="fp32", **common)
    bf16 = create_backend(model, "openvino", precision="bf16", **common)
    check_scale(fp32, scale)
    if bf16.describe()["compiled"][f"sr x{scale} bf16"]["runs"] != "bf16":
        raise GateError("OpenVINO compiled the bf16 request as fp32 on this CPU; nothing to measure")
    pairs, _ = discover(dataset, scale)
    started = time.perf_counter()
    psnrs = {"fp32": [], "bf16": []}
    worst = 0
    for pair in tqdm(pairs, desc=f"{name} x{scale}", unit="img", file=sys.stderr, disable=not progress):
        hr, lr = load_pair(pair, scale)
        x = to_tensor(lr)
        outputs = {p: to_uint8(upscale_tensor(b, x, scale, tile=0)) for p, b in (("fp32", fp32), ("bf16", bf16))}
        for p, out in outputs.items():
            psnrs[p].append(psnr_y(out, hr, scale))
        diff = np.abs(outputs["bf16"].astype(np.int16) - outputs["fp32"].astype(np.int16))
        worst = max(worst, int(diff.max()))
    return GateResult(model=name, scale=int(scale), dataset=str(dataset), images=len(pairs),
                      psnr_fp32=float(np.mean(psnrs["fp32"])), psnr_bf16=float(np.mean(psnrs["bf16"])),
                      max_levels=worst, scope=cpu_bf16_scope(model.spec), engine=fp32.describe()["engine"],
                      cpu=cpu_model(), cpu_bf16=flags, seconds=time.perf_counter() - started,
                      measured=time.strftime("%Y-%m-%d"))


def record_cpu_bf16(repository: Repository, result: GateResult) -> None:
    """Stores the verdict on the weights file serving ``result.scale`` and saves model.json."""
    try:
        with repository.edit(result.model) as entry:
            weights = entry.weights_for(result.scale)
            weights.cpu_bf16 = {**weights.cpu_bf16, str(result.scale): result.verdict()}
    except OSError as exc:
        raise GateError(f"cannot write {repository.root / result.model / 'model.json'}: {exc.strerror or exc}") from None

