"""A new architecture is its spec plus one registry entry, and nothing else.

A throwaway architecture defined only in this file is registered (the one line a real one adds
to ``models/registry.py``) and then goes through everything the shipped ones do: detection and
strict loading from a state dict, the tiled pipeline (tiled = untiled), ONNX export with its
parity check, the onnxruntime backend, and the server — with no other file touched.
"""
from __future__ import annotations

import asyncio

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srserve.backends import TorchBackend, create_backend
from srserve.models import registry
from srserve.models.spec import ArchSpec, InputConvention
from srserve.pipeline import upscale_tensor

from service_fixtures import decode, image_bytes, running_app, service_settings


class Throwaway(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3 to 3·s² channels -> pixel shuffle, plus a nearest skip."""

    def __init__(self, n_feats: int = 8, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.throwaway_head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.throwaway_tail = nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pixel_shuffle(self.throwaway_tail(F.relu(self.throwaway_head(x))), self.scale)
        return y + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def detect_throwaway(sd: dict) -> dict | None:
    if "throwaway_head.weight" not in sd:
        return None
    n_feats = sd["throwaway_head.weight"].shape[0]
    scale = int(round((sd["throwaway_tail.weight"].shape[0] // 3) ** 0.5))
    return {"n_feats": n_feats, "scale": scale}


SPEC = ArchSpec(
    name="throwaway", build=Throwaway, detect=detect_throwaway,
    receptive_radius=lambda h: 2.0,  # two 3x3 convs at LR size
    convention=InputConvention(value_range=1.0), default_hparams={"n_feats": 8, "scale": 2},
    description="a throwaway test architecture",
)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, SPEC.name, SPEC)  # the one registry line
    from srserve.models.repository import Repository

    torch.manual_seed(0)
    net = Throwaway(8, 2)
    arch, hparams, loaded = registry.load_network(net.state_dict())  # detected from the keys, loaded strictly
    assert arch == "throwaway" and hparams == {"n_feats": 8, "scale": 2}
    repository = Repository(tmp_path / "repo")
    repository.add_weights("toy", arch, hparams, loaded.state_dict())
    return repository


def test_tiled_equals_untiled(repo):
    backend = TorchBackend(repo.load("toy"))
    x = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(1))
    whole = upscale_tensor(backend, x, 2, tile=0)
    tiled = upscale_tensor(backend, x, 2, tile=8, batch_size=3)
    assert whole.shape == (1, 3, 74, 58)
    assert float((whole - tiled).abs().max()) < 1e-5


def test_onnx_export_parity_and_onnxruntime(repo, tmp_path):
    from srserve.export.onnx_export import export_model, plan_jobs

    model = repo.load("toy")
    written, failures = export_model(model, repo.root / "toy", plan_jobs(model, model.scales, ["fp32"]),
                                     progress=False, log=lambda line: None)
    assert not failures and written and all(a.parity.get("passed") for a in written)
    ort = create_backend("toy", "onnxruntime", repository=repo.root, cache_dir=tmp_path / "cache")
    x = torch.rand(1, 3, 21, 17, generator=torch.Generator().manual_seed(2))
    want = upscale_tensor(TorchBackend(repo.load("toy")), x, 2, tile=8)
    assert float((upscale_tensor(ort, x, 2, tile=8) - want).abs().max()) < 1e-4


def test_served_like_the_shipped_architectures(repo):
    from srserve.pipeline.image import OutputSize, upscale_raster
    from srserve.pipeline.imageio import encode_image, read_image

    body = image_bytes(30, 26, seed=3)

    async def scenario():
        async with running_app(service_settings(repo.root, models=["toy"])) as (_, client):
            return await client.post("/upscale?model=toy&scale=2", content=body, headers={"Content-Type": "image/png"})

    r = asyncio.run(scenario())
    assert r.status_code == 200, r.text
    assert r.headers["x-output-size"] == "52x60"
    raster = read_image(body)
    expected = upscale_raster(TorchBackend(repo.load("toy")), raster, OutputSize(2, 60, 52), tile=16)
    assert int(abs(decode(r.content) - decode(encode_image(expected, "png", None))).max()) <= 1
