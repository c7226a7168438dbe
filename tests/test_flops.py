"""FLOP accounting (``srserve.models.flops``) against counts derived here from the layer shapes,
and the device peaks it is compared with (``srserve.backends.peaks``)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from srserve.backends import peaks
from srserve.models.flops import flops_per_lr_pixel, flops_per_output_pixel
from srserve.models.registry import build_network, get_spec
from srserve.models.repository import LoadedModel


def conv(c_in: int, c_out: int, k: int = 3) -> int:
    """FLOPs per output pixel of a k×k convolution: 2 × multiply-adds."""
    return 2 * c_in * c_out * k * k


def loaded(arch: str, hparams: dict, scale: int, spec=None, device: str = "meta") -> LoadedModel:
    """A LoadedModel of ``arch`` whose entry gives the spec and hyper-parameters (no files); its
    network is built on the meta device unless asked (no weights to initialise)."""
    from srserve.models.adapter import SRNet

    spec = spec or get_spec(arch)
    entry = SimpleNamespace(spec=spec, weights_for=lambda s: SimpleNamespace(hparams=hparams))
    with torch.device(device):
        net = SRNet(spec, build_network(arch, hparams), scale)
    return LoadedModel(name=arch, architecture=arch, nets={scale: net}, entry=entry)


def edsr_flops(n_resblocks: int, n_feats: int, scale: int) -> int:
    """EDSR per LR pixel: mean shift (1×1) and head at LR, 2 convs per block + the body conv, the
    sub-pixel upsampler (each ×2 stage runs at its input resolution), tail and mean shift at HR."""
    lr = conv(3, 3, 1) + conv(3, n_feats) + (2 * n_resblocks + 1) * conv(n_feats, n_feats)
    up = sum(4 ** i * conv(n_feats, 4 * n_feats) for i in range(scale.bit_length() - 1)) if scale != 3 \
        else conv(n_feats, 9 * n_feats)
    hr = scale * scale * (conv(n_feats, 3) + conv(3, 3, 1))
    return lr + up + hr


def vdsr_flops(num_layers: int, n_feats: int, scale: int) -> int:
    """VDSR per LR pixel: RGB->YCbCr (3×3 per pixel) at LR, the separable 5-tap bicubic (width
    pass on LR rows, height pass on rows already ×s wide; s phases each, 3 channels), the network
    at HR on Y, YCbCr->RGB at HR."""
    s = scale
    bicubic = 3 * 2 * 5 * s + 3 * 2 * 5 * s * s
    network = s * s * (conv(1, n_feats) + (num_layers - 2) * conv(n_feats, n_feats) + conv(n_feats, 1))
    return 2 * 3 * 3 + bicubic + network + s * s * 2 * 3 * 3


def rrdbnet_flops(num_block: int, nf: int, gc: int, scale: int) -> float:
    """RRDBNet per LR pixel: the trunk at LR/u (u = pixel-unshuffle factor: 1 at ×4, 2 at ×2),
    then two nearest ×2 upsamplings each followed by a conv, conv_hr and conv_last at 4× the
    trunk resolution."""
    u = {4: 1, 2: 2, 1: 4}[scale]
    rdb = conv(nf, gc) + conv(nf + gc, gc) + conv(nf + 2 * gc, gc) + conv(nf + 3 * gc, gc) + conv(nf + 4 * gc, nf)
    trunk = conv(3 * u * u, nf) + 3 * num_block * rdb + conv(nf, nf)
    upsampling = 4 * conv(nf, nf) + 16 * (2 * conv(nf, nf) + conv(nf, 3))
    return (trunk + upsampling) / (u * u)


def test_edsr_baseline_x2_is_the_analytic_2_7_mflop_per_lr_pixel():
    model = loaded("edsr", {"n_resblocks": 16, "n_feats": 64, "scale": 2}, 2)
    expected = edsr_flops(16, 64, 2)
    assert 2.7e6 < expected < 2.8e6  # the "about 2.7 MFLOP per LR pixel"
    assert flops_per_lr_pixel(model, 2) == pytest.approx(expected, rel=1e-9)
    assert flops_per_output_pixel(model, 2) == pytest.approx(expected / 4, rel=1e-9)


@pytest.mark.parametrize("scale", [3, 4])
def test_edsr_other_scales(scale):
    model = loaded("edsr", {"n_resblocks": 4, "n_feats": 16, "scale": scale}, scale)
    assert flops_per_lr_pixel(model, scale) == pytest.approx(edsr_flops(4, 16, scale), rel=1e-9)


@pytest.mark.parametrize("scale", [2, 4])
def test_vdsr_counts_the_hr_network_bicubic_and_colour_conversion(scale):
    model = loaded("vdsr", {"num_layers": 20, "n_feats": 64, "scales": [2, 3, 4]}, scale)
    assert flops_per_lr_pixel(model, scale) == pytest.approx(vdsr_flops(20, 64, scale), rel=1e-9)


@pytest.mark.parametrize("scale", [2, 4])
def test_rrdbnet_with_and_without_pixel_unshuffle(scale):
    hparams = {"num_block": 23, "num_feat": 64, "num_grow_ch": 32, "scale": scale}
    model = loaded("rrdbnet", hparams, scale)
    assert flops_per_lr_pixel(model, scale) == pytest.approx(rrdbnet_flops(23, 64, 32, scale), rel=1e-9)


def test_an_analytic_value_in_the_spec_is_used_instead_of_counting():
    spec = dataclasses.replace(get_spec("edsr"), flops_per_lr_pixel=lambda h, s: 1000.0 * h["n_feats"] * s)
    model = loaded("edsr", {"n_resblocks": 1, "n_feats": 8, "scale": 2}, 2, spec)
    assert flops_per_lr_pixel(model, 2) == 16000.0


def test_counting_leaves_the_network_alone_and_needs_no_arithmetic():
    model = loaded("dasr", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4, "scale": 4}, 4,
                   device="cpu")
    before = {k: v.clone() for k, v in model.net(4).state_dict().items()}
    assert flops_per_lr_pixel(model, 4) > 0
    after = model.net(4).state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


# --- peaks ----------------------------------------------------------------------------------------

def test_gpu_peaks_are_dense_datasheet_figures():
    h200 = peaks.gpu_peak("NVIDIA H200")
    assert h200.tflops == {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}
    assert peaks.gpu_peak("NVIDIA H100 80GB HBM3").tflops["fp16"] == 989.4
    assert peaks.gpu_peak("NVIDIA H100 PCIe").tflops["fp16"] == 756.5
    assert peaks.gpu_peak("NVIDIA A100-SXM4-80GB").tflops["tf32"] == 156.0
    assert peaks.gpu_peak("NVIDIA L40S").tflops["fp16"] == 362.05  # not taken for the L4
    assert peaks.gpu_peak("NVIDIA L4").tflops["fp16"] == 121.0
    assert peaks.gpu_peak("NVIDIA GeForce RTX 4090").tflops["fp16"] == 165.2


@pytest.mark.parametrize("name", ["NVIDIA H200 NVL", "NVIDIA H100 NVL", "Tesla T4", "NVIDIA GeForce RTX 3060"])
def test_gpus_not_in_the_table_have_no_peak(name):
    assert peaks.gpu_peak(name) is None


@pytest.mark.parametrize("flags,vendor,family,expected", [
    ({"sse", "sse2"}, "GenuineIntel", 6, 8),
    ({"avx", "fma", "avx2"}, "GenuineIntel", 6, 32),  # Haswell..: 2 FMA pipes × 8 lanes
    ({"avx", "fma", "avx2", "avx512f"}, "GenuineIntel", 6, 64),  # Skylake-SP with 2 FMA-512 pipes
    ({"avx", "fma", "avx2", "avx512f"}, "AuthenticAMD", 25, 32),  # Zen 4: 512-bit ops on 256-bit units
    ({"avx", "fma", "avx2", "avx512f"}, "AuthenticAMD", 26, 64),  # Zen 5
    ({"asimd", "fp"}, "", 0, 16),
])
def test_cpu_flops_per_cycle_from_the_isa(flags, vendor, family, expected):
    assert peaks.fp32_flops_per_cycle(flags, vendor, family) == expected


def test_cpu_peak_scales_with_threads_up_to_the_cores_available():
    one, many = peaks.cpu_peak(1), peaks.cpu_peak(10_000)
    assert one.tflops["fp32"] > 0 and "estimate" in one.source
    assert many.tflops["fp32"] == pytest.approx(one.tflops["fp32"] * peaks.physical_cores_available(), rel=1e-3)


def test_efficiency_against_the_peak_of_the_precision_run(monkeypatch):
    h200 = peaks.gpu_peak("NVIDIA H200")
    # the figure: EDSR x2 at 40 output Mpx/s = 10 LR Mpx/s × 2.7 MFLOP = 27 TFLOP/s
    e = peaks.efficiency(2.7e6, 10e6, h200, "fp16", "cuda")
    assert e["tflops"] == pytest.approx(27.0) and e["peak_kind"] == "fp16"
    assert e["pct_of_peak"] == pytest.approx(100 * 27.0 / 989.4)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert peaks.efficiency(1e6, 1e6, h200, "fp32", "cuda")["peak_kind"] == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert peaks.efficiency(1e6, 1e6, h200, "fp32", "cuda")["peak_tflops"] == 67.0
    assert peaks.efficiency(1e6, 1e6, None, "fp16", "cuda")["pct_of_peak"] is None
    cpu = peaks.DevicePeak("cpu", {"fp32": 0.1})
    e = peaks.efficiency(1e6, 5e4, cpu, "fp32", "cpu")
    assert peaks.format_efficiency(e, "cpu") == "50.0 GFLOP/s (50.0% of fp32 peak)"
