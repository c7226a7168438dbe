"""Small facts about the CPU the runtime runs on: its name, its flags, and whether it has bf16.

bf16 pays on a CPU only with native bf16 dot products: AMX-BF16 (Intel Sapphire Rapids and
later) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 and later). Elsewhere OpenVINO would run
bf16 requests in fp32 anyway. The flags come from ``/proc/cpuinfo`` (Linux); the functions take
the text as an argument so tests can fake any CPU.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def _field(name: str, text: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_flags(text: str | None = None) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (or in ``text``)."""
    return frozenset(_field("flags", _cpuinfo() if text is None else text).split())


def cpu_model(text: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    return _field("model name", _cpuinfo() if text is None else text) or platform.processor() or "unknown CPU"


def bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """Which of the native-bf16 flags the CPU has (empty: no bf16 worth running)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    return bool(bf16_flags(flags))
