"""Peak arithmetic rates of the devices srserve runs on, so benchmarks can say how close an engine
gets to the roofline: achieved FLOP/s (``srserve.models.flops``) over the peak for its precision.

GPUs: dense (no 2:4 sparsity) TFLOP/s from the vendor's datasheets, matched on the name torch
reports. ``fp32`` is the plain CUDA-core rate; ``tf32``/``fp16``/``bf16`` are tensor-core rates
(fp16 with fp32 accumulation, which is what cuDNN and cuBLAS use for fp16 inputs). An fp32 run on
CUDA is compared with the TF32 peak when cuDNN may use TF32 (``torch.backends.cudnn.allow_tf32``,
on by default, also TensorRT's TF32 flag), since that is what its convolutions run on.

CPUs: an estimate, cores × clock × fp32 FLOPs per cycle and core from the ISA flags (vector width
× 2 for a fused multiply-add × 2 FMA pipes; AMD before Zen 5 executes AVX-512 on 256-bit
datapaths). It is an upper bound: turbo clocks, shared cores and a single FMA pipe lower it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class GpuPeak:
    pattern: str  # regex on torch.cuda.get_device_name()
    model: str
    fp32: float
    tf32: float
    fp16: float
    bf16: float
    source: str


# Dense TFLOP/s; the datasheets print tensor-core figures "with sparsity", halved here.
GPU_PEAKS = (
    GpuPeak(r"\bH200\b(?!.*NVL)", "H200 SXM", 67.0, 494.7, 989.4, 989.4,
            "NVIDIA H200 datasheet: FP32 67, TF32 989, FP16/BF16 1979 TFLOPS with sparsity (GH100 SXM, as H100 SXM)"),
    GpuPeak(r"\bH100\b.*PCIe", "H100 PCIe", 51.0, 378.0, 756.5, 756.5,
            "NVIDIA H100 PCIe product brief: FP32 51, TF32 756, FP16/BF16 1513 TFLOPS with sparsity"),
    GpuPeak(r"\bH100\b(?!.*(PCIe|NVL))", "H100 SXM", 67.0, 494.7, 989.4, 989.4,
            "NVIDIA H100 datasheet (SXM): FP32 67, TF32 989, FP16/BF16 1979 TFLOPS with sparsity"),
    GpuPeak(r"\bA100\b", "A100", 19.5, 156.0, 312.0, 312.0,
            "NVIDIA A100 datasheet: FP32 19.5, TF32 156, FP16/BF16 312 TFLOPS dense (SXM4 and PCIe)"),
    GpuPeak(r"\bL40S\b", "L40S", 91.6, 183.0, 362.05, 362.05,
            "NVIDIA L40S datasheet: FP32 91.6, TF32 366, FP16/BF16 733 TFLOPS with sparsity"),
    GpuPeak(r"\bL4\b", "L4", 30.3, 60.0, 121.0, 121.0,
            "NVIDIA L4 datasheet: FP32 30.3, TF32 120, FP16/BF16 242 TFLOPS with sparsity"),
    GpuPeak(r"RTX 4090", "GeForce RTX 4090", 82.6, 82.6, 165.2, 165.2,
            "NVIDIA Ada whitepaper (RTX 4090): FP32 82.6, TF32 82.6, FP16/BF16 165.2 TFLOPS dense, FP32 accumulate"),
)


@dataclass(frozen=True)
class DevicePeak:
    """A device's peak TFLOP/s per precision key (fp32, tf32, fp16, bf16) and where they come from."""

    device: str
    tflops: dict = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict:
        return {"device": self.device, "tflops": dict(self.tflops), "source": self.source}


def gpu_peak(name: str) -> DevicePeak | None:
    """The table's entry for a GPU name as torch reports it, None for a GPU not in the table."""
    for entry in GPU_PEAKS:
        if re.search(entry.pattern, name):
            return DevicePeak(f"{name} ({entry.model})",
                              {"fp32": entry.fp32, "tf32": entry.tf32, "fp16": entry.fp16, "bf16": entry.bf16},
                              entry.source)
    return None


# --- CPU ----------------------------------------------------------------------------------------

def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    info: dict[str, str] = {}
    if not path.is_file():
        return info
    for line in path.read_text().splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def fp32_flops_per_cycle(flags: set[str], vendor: str = "", family: int = 0) -> int:
    """fp32 FLOPs per cycle and core: lanes × 2 (multiply-add) × 2 FMA pipes (1 without FMA)."""
    if "avx512f" in flags:
        lanes = 8 if vendor == "AuthenticAMD" and family < 0x1A else 16  # Zen 4: AVX-512 as 2 × 256 bit
    elif "avx" in flags:
        lanes = 8
    elif flags & {"asimd", "neon"}:
        lanes = 4
    else:
        lanes = 4  # SSE
    pipes = 2 if flags & {"fma", "asimd"} else 1
    return lanes * 2 * pipes


def _clock_ghz(info: dict) -> tuple[float, str]:
    """The maximum clock when the kernel exposes it, else the current one from /proc/cpuinfo."""
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        return int(max_freq.read_text()) / 1e6, "cpuinfo_max_freq"
    if info.get("cpu MHz"):
        return float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
    return 0.0, "unknown clock"


def physical_cores_available() -> int:
    """CPUs this process may use, counting SMT siblings once."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = _cpuinfo()
    siblings, cores = int(info.get("siblings", 0) or 0), int(info.get("cpu cores", 0) or 0)
    smt = siblings // cores if siblings and cores and siblings >= cores else 1
    return max(1, logical // max(1, smt))


def cpu_peak(threads: int | None = None) -> DevicePeak:
    """Estimated fp32 peak of ``threads`` cores (default: torch's intra-op threads), capped at the
    physical cores this process may use."""
    info = _cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    vendor = info.get("vendor_id", "")
    try:
        family = int(info.get("cpu family", "0"))
    except ValueError:
        family = 0
    cores = min(int(threads or torch.get_num_threads()), physical_cores_available())
    ghz, clock_source = _clock_ghz(info)
    per_cycle = fp32_flops_per_cycle(flags, vendor, family)
    name = info.get("model name", "CPU")
    tflops = cores * ghz * per_cycle / 1e3
    return DevicePeak(f"{name} ({cores} cores)", {"fp32": round(tflops, 4)},
                      f"estimate: {cores} cores × {ghz:.2f} GHz ({clock_source}) × {per_cycle} fp32 FLOP/cycle "
                      f"(from the ISA flags; torch uses {torch.backends.cpu.get_cpu_capability()})")


# --- one place to compare a measurement with the peak ------------------------------------------

def device_peak(device: torch.device | str, threads: int | None = None) -> DevicePeak | None:
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device))
    return cpu_peak(threads)


def peak_key(device_type: str, precision: str) -> str:
    """Which peak a run at ``precision`` is compared with (fp32 on CUDA: TF32 where cuDNN uses it)."""
    if device_type == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision


def efficiency(flops_per_lr_pixel: float, lr_pixels_per_s: float, peak: DevicePeak | None, precision: str,
               device_type: str) -> dict:
    """Achieved TFLOP/s and its share of the peak for ``precision`` (None where no peak is known)."""
    achieved = flops_per_lr_pixel * lr_pixels_per_s / 1e12
    key = peak_key(device_type, precision)
    top = peak.tflops.get(key) if peak is not None else None
    return {"tflops": achieved, "peak_kind": key, "peak_tflops": top,
            "pct_of_peak": 100.0 * achieved / top if top else None}


def format_efficiency(e: dict, device_type: str) -> str:
    """``27.1 TFLOP/s (2.7% of tf32 peak)``; GFLOP/s on a CPU."""
    rate = f"{e['tflops'] * 1e3:.1f} GFLOP/s" if device_type == "cpu" else f"{e['tflops']:.2f} TFLOP/s"
    share = f"{e['pct_of_peak']:.1f}% of {e['peak_kind']} peak" if e["pct_of_peak"] is not None else "no peak known"
    return f"{rate} ({share})"
