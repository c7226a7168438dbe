"""Out-of-memory recovery, automatic tile size, and DASR's one degradation per image."""
from __future__ import annotations

import pytest
import torch

from pipeline_nets import backend_of, lr_image, tiny_repository
from srserve.pipeline import OutOfMemory, upscale_tensor
from srserve.pipeline.degradation import image_degradation
from srserve.pipeline.memory import auto_tile_size, available_memory, bytes_per_lr_pixel, is_out_of_memory


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repository(tmp_path_factory.mktemp("repo"), names=("edsr", "dasr", "rrdb4", "mdsr"))


class RaisesAboveArea:
    """A backend wrapper that fails like an allocator for batches above ``max_pixels`` LR pixels."""

    def __init__(self, inner, max_pixels: int, error):
        self.inner, self.max_pixels, self.error = inner, max_pixels, error
        self.model, self.device, self.name, self.precision = inner.model, inner.device, "wrapped", "fp32"
        self.calls: list[tuple[int, int, int]] = []

    def run(self, x, scale, degradation=None):
        self.calls.append((x.shape[0], x.shape[2], x.shape[3]))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.max_pixels:
            raise self.error()
        return self.inner.run(x, scale, degradation)

    def degradation(self, x, scale):
        return self.inner.degradation(x, scale)


OOM_ERRORS = {
    "cuda": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu-allocator": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                          "memory: you tried to allocate 123456789 bytes"),
    "memoryerror": MemoryError,
}


@pytest.mark.parametrize("kind", list(OOM_ERRORS))
def test_out_of_memory_halves_the_tile_and_completes(repo, kind):
    inner = backend_of(repo, "edsr")
    x = lr_image("Set5/x2/LR/img_003.png", crop=(60, 70))
    expected = upscale_tensor(inner, x, 2, tile=0)
    backend = RaisesAboveArea(inner, max_pixels=40 * 40, error=OOM_ERRORS[kind])
    out = upscale_tensor(backend, x, 2, tile=0, batch_size=4)
    # first the whole image, then smaller tiles until a window fits; complete and equal
    assert backend.calls[0] == (1, 60, 70)
    assert max(h * w * n for n, h, w in backend.calls[-3:]) <= 40 * 40
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-5


def test_out_of_memory_halves_the_batch_first(repo):
    inner = backend_of(repo, "edsr")
    x = lr_image("Set5/x2/LR/img_003.png", crop=(64, 64))
    backend = RaisesAboveArea(inner, max_pixels=2 * 40 * 40, error=OOM_ERRORS["cuda"])
    out = upscale_tensor(backend, x, 2, tile=16, batch_size=8)
    batches = [n for n, _, _ in backend.calls]
    assert batches[0] == 8 and 2 in batches and all(n <= 2 for n in batches[batches.index(2):])
    assert (out - upscale_tensor(inner, x, 2, tile=0)).abs().max().item() < 1e-5


def test_gives_up_cleanly_when_nothing_fits(repo):
    backend = RaisesAboveArea(backend_of(repo, "edsr"), max_pixels=0, error=OOM_ERRORS["memoryerror"])
    with pytest.raises(OutOfMemory, match="out of memory even with"):
        upscale_tensor(backend, lr_image(crop=(40, 40)), 2, tile=0)


def test_other_errors_are_not_mistaken_for_out_of_memory(repo):
    backend = RaisesAboveArea(backend_of(repo, "edsr"), max_pixels=0, error=lambda: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        upscale_tensor(backend, lr_image(crop=(40, 40)), 2, tile=0)


def test_out_of_memory_classification():
    assert all(is_out_of_memory(make()) for make in OOM_ERRORS.values())
    assert is_out_of_memory(RuntimeError("Failed to allocate memory for requested buffer of size 1024"))
    assert not is_out_of_memory(RuntimeError("Expected 4D input"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_automatic_tile_size_from_memory(repo, monkeypatch):
    backend = backend_of(repo, "rrdb4")
    x = lr_image("Set5/x2/LR/img_003.png", crop=(64, 64))
    per_pixel = bytes_per_lr_pixel(backend, 4)
    budget = int(per_pixel * 40 * 40)  # room for a 40×40 window, not for the 64×64 image
    assert auto_tile_size(backend, 4, margin=8, budget=budget) == 16  # 40 - 2·8, on the 16 quantum
    monkeypatch.setenv("SR_CPU_MEMORY_BYTES", str(budget))
    assert available_memory("cpu") == budget
    calls = RaisesAboveArea(backend, max_pixels=10**9, error=MemoryError)
    out = upscale_tensor(calls, x, 4, tile=None, exact=True)
    assert len(calls.calls) > 1  # tiled, because the whole image does not fit the budget
    assert (out - upscale_tensor(backend, x, 4, tile=0)).abs().max().item() < 1e-5
    monkeypatch.setenv("SR_CPU_MEMORY_BYTES", str(10**12))
    calls.calls.clear()
    upscale_tensor(calls, x, 4, tile=None)
    assert calls.calls == [(1, 64, 64)]  # fits: the whole image at once


def test_memory_estimate_grows_with_scale_and_width(repo):
    mdsr = repo.load("mdsr")
    assert bytes_per_lr_pixel(mdsr, 2) < bytes_per_lr_pixel(mdsr, 3) < bytes_per_lr_pixel(mdsr, 4)
    assert bytes_per_lr_pixel(repo.load("edsr"), 2) > 0


# --- DASR: one degradation per image ------------------------------------------------------------

class CountingBackend:
    def __init__(self, inner):
        self.inner, self.model, self.device, self.name, self.precision = inner, inner.model, inner.device, "c", "fp32"
        self.degradation_calls, self.run_degradations = 0, []

    def run(self, x, scale, degradation=None):
        self.run_degradations.append(degradation.clone())
        return self.inner.run(x, scale, degradation)

    def degradation(self, x, scale):
        self.degradation_calls += 1
        return self.inner.degradation(x, scale)


def test_dasr_degradation_once_per_image_and_shared_by_tiles(repo):
    backend = CountingBackend(backend_of(repo, "dasr"))
    x = lr_image("Set5/x2/LR/img_003.png", crop=(64, 72))
    tiled = upscale_tensor(backend, x, 2, tile=16, batch_size=3)
    assert backend.degradation_calls == 1
    whole = backend.inner.degradation(x, 2)
    assert len(backend.run_degradations) > 1
    for deg in backend.run_degradations:  # every tile of the batch gets the whole image's vector
        assert torch.equal(deg, whole.expand(deg.shape[0], -1))
    assert (tiled - upscale_tensor(backend.inner, x, 2, tile=0)).abs().max().item() < 1e-5


class MeanColour:
    """A stand-in encoder whose 'degradation' is the mean colour: a global average pool too."""

    class model:  # noqa: N801 - mimics LoadedModel's attribute
        needs_degradation = True

    def __init__(self):
        self.crops = []

    def degradation(self, x, scale):
        self.crops.append(tuple(x.shape[-2:]))
        return x.mean(dim=(2, 3))


def test_huge_image_degradation_is_the_area_weighted_mean_of_bounded_crops():
    x = torch.rand(1, 3, 200, 124)
    fake = MeanColour()
    vector = image_degradation(fake, x, 4, max_pixels=64 * 64)
    assert len(fake.crops) > 1 and all(h * w <= 64 * 64 for h, w in fake.crops)
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in fake.crops)
    torch.testing.assert_close(vector, x.mean(dim=(2, 3)), atol=1e-6, rtol=0)
    fake.crops.clear()
    image_degradation(fake, x, 4)  # below the default bound: one pass over the whole image
    assert fake.crops == [(200, 124)]
