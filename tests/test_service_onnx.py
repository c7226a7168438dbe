"""``backend=auto`` on a CPU serves through OpenVINO (what ``make serve`` does): graphs exported
in the repository are used, missing ones are exported into the engine cache, and the results
equal the torch backend's (±1; the tiny models have no CPU bf16 verdict, so they run fp32)."""
from __future__ import annotations

import asyncio

import pytest

from service_fixtures import image_bytes, make_repository, max_diff, running_app, service_settings

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def test_auto_backend_uses_exported_graphs(tmp_path):
    from srserve.export.onnx_export import export_model, plan_jobs
    from srserve.models.repository import Repository

    repo = Repository(make_repository(tmp_path / "repo"))
    for name in ("edsr", "dasr"):
        model = repo.load(name)
        _, failures = export_model(model, repo.root / name, plan_jobs(model, model.scales, ["fp32"]),
                                   progress=False, log=lambda line: None)
        assert not failures, failures
    body = image_bytes(36, 30, seed=4)

    async def serve(backend: str):
        settings = service_settings(repo.root, models=["edsr", "dasr", "mdsr"], backend=backend,
                                    engine_cache=tmp_path / "cache")
        async with running_app(settings) as (app, client):
            listed = (await client.get("/v1/models")).json()["models"]
            described = {m["name"]: m["backend"] for m in listed}
            precisions = {m["name"]: m["precision"] for m in listed}
            results = [await client.post(f"/upscale?model={m}&scale=2", content=body,
                                         headers={"Content-Type": "image/png"}) for m in ("edsr", "dasr", "mdsr")]
            return described, results, precisions

    auto_backends, auto, auto_precisions = asyncio.run(serve("auto"))
    torch_backends, torch_results, _ = asyncio.run(serve("torch"))
    # mdsr has no graphs in the repository: they were exported into the cache
    assert auto_backends == {"edsr": "openvino", "dasr": "openvino", "mdsr": "openvino"}
    assert (tmp_path / "cache" / "onnx" / "mdsr" / "exports.json").is_file()
    assert not (tmp_path / "cache" / "onnx" / "edsr").exists()
    assert set(torch_backends.values()) == {"torch"}
    for a, t in zip(auto, torch_results):
        assert a.status_code == t.status_code == 200, a.text
        assert max_diff(a.content, t.content) <= 1
    assert [r.headers["x-backend"] for r in auto] == ["openvino"] * 3
    # the header names the precision /v1/models lists (tiny models have no bf16 gate: fp32)
    assert [r.headers["x-precision"] for r in auto] == [auto_precisions[m] for m in ("edsr", "dasr", "mdsr")] == ["fp32"] * 3
