"""The architectures this project knows, as an explicit table (no import-time registration)."""
from __future__ import annotations

import torch
from torch import nn

from . import dasr, edsr, hat, mdsr, rrdbnet, span, srvgg, swinir, vdsr
from .errors import SRError
from .spec import ArchSpec

# Detection tries them in this order; each detector requires keys no other family has (HAT's
# groups hold conv_block/overlap_attn, which SwinIR's detector refuses), so the order only
# matters for speed: our own families first, then the community ones.
ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec for spec in (vdsr.SPEC, edsr.SPEC, mdsr.SPEC, rrdbnet.SPEC, dasr.SPEC, srvgg.SPEC, span.SPEC,
                                 hat.SPEC, swinir.SPEC)
}


class UnknownArchitecture(SRError, ValueError):
    pass


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnknownArchitecture(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_network(arch: str, hparams: dict | None = None) -> nn.Module:
    spec = get_spec(arch)
    return spec.build(**{**spec.default_hparams, **(hparams or {})})


def scales_of(arch: str, hparams: dict) -> list[int]:
    """Scales one network serves: the multi-scale list, or its single ``scale``."""
    return [int(s) for s in hparams["scales"]] if "scales" in hparams else [int(hparams["scale"])]


def detect(state_dict: dict) -> tuple[str, dict]:
    """Architecture name and hyper-parameters of a (wrapper-free) state dict."""
    for name, spec in ARCHITECTURES.items():
        hparams = spec.detect(state_dict)
        if hparams is not None:
            return name, hparams
    sample = ", ".join(list(state_dict)[:4])
    raise UnknownArchitecture(f"no known architecture matches these keys (first: {sample})")


class WeightsMismatch(SRError, ValueError):
    """Weights whose names or shapes do not fit the architecture (a user-input error, one line)."""


class UnknownHyperParameter(SRError, ValueError):
    """An explicit hyper-parameter the architecture does not have (one line, before any build)."""


def load_network(state_dict: dict, arch: str = "auto", hparams: dict | None = None) -> tuple[str, dict, nn.Module]:
    """Converts ``state_dict`` to our layout, detects what is missing, builds and loads strictly."""
    try:
        return _load_network(state_dict, arch, hparams)
    except SRError:
        raise
    except (ValueError, KeyError, IndexError, RuntimeError, TypeError) as exc:  # malformed shapes or hparams
        named = "" if arch == "auto" else f"{arch} "
        raise WeightsMismatch(f"{named}weights do not fit: {' '.join(str(exc).split())[:300]}") from None


def _load_network(state_dict: dict, arch: str, hparams: dict | None) -> tuple[str, dict, nn.Module]:
    if arch == "auto":
        arch, detected = detect(state_dict)
    else:
        detected = get_spec(arch).detect(get_spec(arch).convert(state_dict))
        if detected is None:
            raise UnknownArchitecture(f"these weights are not a {arch} checkpoint")
    spec = get_spec(arch)
    unknown = sorted(set(hparams or {}) - set(spec.default_hparams) - set(detected))
    if unknown:
        known = ", ".join(dict.fromkeys([*detected, *spec.default_hparams]))
        raise UnknownHyperParameter(f"{arch} has no hyper-parameter {', '.join(map(repr, unknown))} (it has: {known})")
    hparams = {**detected, **(hparams or {})}
    net = build_network(arch, hparams)
    converted = spec.convert(state_dict)
    # MeanShift constants are fixed; accept checkpoints that omit them
    missing_ok = {k for k in net.state_dict() if k.split(".")[-2:][0] in ("sub_mean", "add_mean")}
    result = net.load_state_dict({k: torch.as_tensor(v) for k, v in converted.items()}, strict=False)
    missing = [k for k in result.missing_keys if k not in missing_ok]
    if missing or result.unexpected_keys:
        raise WeightsMismatch(f"{arch} weights do not fit: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return arch, hparams, net.eval()
