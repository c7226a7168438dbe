"""bench/gpu_suite.sh: refuses cleanly without CUDA, and its --smoke run on the CPU writes the
report (JSON + markdown) with every section; the target verdicts are computed from the rows."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import device_like
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    """A bench/ script as a module (bench/ is not a package; its folder is not put on sys.path,
    where bench/backends.py would shadow other imports)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_suite = load_bench("gpu_suite")


def run_suite(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """bench/gpu_suite.sh as on the GPU machine: srserve not installed (its shim maps the checkout)."""
    with tempfile.TemporaryDirectory() as folder:
        return subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), *argv], capture_output=True, text=True,
                              env=device_like.env(Path(folder)), timeout=timeout, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the suite would run")
def test_refuses_to_start_without_cuda_in_one_line(tmp_path):
    done = run_suite("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stdout.strip().count("\n") == 0 and "no CUDA GPU" in done.stdout and "--smoke" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path):
    from srserve.models.flops import flops_per_lr_pixel
    from srserve.models.repository import Repository

    done = run_suite("--smoke", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    md = (tmp_path / "out" / "gpu_suite.md").read_text()
    assert data["format"] == gpu_suite.FORMAT and data["mode"] == "smoke"
    assert set(data["sections"]) == {"environment", "compiled build", "engine sweep", "served path"}
    assert data["environment"]["peak"]["tflops"]["fp32"] > 0
    tiny = Repository(data["repository"]).load("edsr")
    assert data["flops_per_lr_pixel"] == {"edsr x2": flops_per_lr_pixel(tiny, 2)}
    assert data["engines"]["tensorrt fp16"] == "TensorRT needs a GPU"

    runnable = [label for label, status in data["engines"].items() if status == "ok" and label != "compiled fp16"]
    assert {"eager fp32", "eager fp16", "eager bf16"} <= set(runnable)
    rows = {(r["engine"], r["batch"], r["window"]): r for r in data["sweep"]}
    for engine in runnable:
        for batch in gpu_suite.SMOKE_BATCHES:
            for window in gpu_suite.SMOKE_WINDOWS:
                row = rows[(engine, batch, window)]
                assert "error" not in row, row
                assert row["lr_mpx_s"] > 0 and row["out_mpx_s"] == pytest.approx(4 * row["lr_mpx_s"])
                seconds = row["ms_per_batch"] / 1e3
                assert row["tflops"] == pytest.approx(flops_per_lr_pixel(tiny, 2) * batch * window ** 2 / seconds / 1e12)
                assert f"| edsr x2 | {engine} | {batch} | {window} |" in md
    first = gpu_suite.point_passes(gpu_suite.SMOKE_BATCHES, gpu_suite.SMOKE_WINDOWS)[0]
    assert rows[("eager fp16", *first)]["max_levels_vs_eager_fp32"] <= 8

    runs = {(r["clients"], r["batching"]): r for r in data["served"]["runs"]}
    assert set(runs) == {(2, "on"), (2, "off"), (4, "on"), (4, "off")}
    for run in runs.values():
        assert run["requests"] > 0 and run["p50_s"] <= run["p95_s"] <= run["p99_s"]
        assert run["served_over_bare"] > 0
    assert runs[(2, "off")]["mean_batch"] == 1.0
    assert len(data["targets"]) == 5 and {t["verdict"] for t in data["targets"]} <= {"smoke", "not measured"}
    assert "compiled build: not in --smoke" in " ".join(data["skipped"])
    for header in ("## Sections", "## Engines", "## Engine sweep", "## Served path", "## Targets", "## Skipped"):
        assert header in md


@pytest.mark.slow
def test_smoke_compiled_builds_the_package_in_a_subprocess_and_sweeps_it(tmp_path):
    """The compiled engine's path through the suite (an AOTInductor build: about a minute here)."""
    done = run_suite("--smoke-compiled", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    build = data["compiled_build"]
    assert build["status"] == "built" and build["built_now"] and Path(build["package"]).is_file()
    assert build["shape"] == {"max_batch": max(gpu_suite.SMOKE_BATCHES), "max_side": max(gpu_suite.SMOKE_WINDOWS),
                              "align": 1, "min_side": 8}
    rows = [r for r in data["sweep"] if r["engine"] == "compiled fp16"]
    assert len(rows) == len(gpu_suite.SMOKE_BATCHES) * len(gpu_suite.SMOKE_WINDOWS)
    for r in rows:
        assert "error" not in r and r["precision"] == "fp16"
        assert r["compiled_batches"]["package"] > 0 and r["compiled_batches"]["eager"] == 0  # no graphs on a CPU
    assert rows[0]["max_levels_vs_eager_fp32"] <= 8


def row(engine: str, precision: str, lr_mpx_s: float, pct: float | None) -> dict:
    return {"model": "edsr", "scale": 4, "batch": 8, "window": 192, "engine": engine, "precision": precision,
            "lr_mpx_s": lr_mpx_s, "pct_of_peak": pct}


def served(clients: int, batching: str, mp_per_s: float, p50: float, p99: float, over_bare: float) -> dict:
    return {"clients": clients, "batching": batching, "mp_per_s": mp_per_s, "p50_s": p50, "p99_s": p99,
            "served_over_bare": over_bare}


def test_targets_are_computed_from_the_measurements():
    data = {"sweep": [row("eager fp32", "fp32", 10.0, 5.0), row("eager fp16", "fp16", 18.0, 4.0),
                      row("compiled fp16", "fp16", 31.0, 26.0)],
            "served": {"runs": [served(16, "on", 40.0, 0.10, 0.25, 0.92), served(16, "off", 25.0, 0.2, 0.3, 0.6)]}}
    verdicts = [(t["measured"], t["verdict"]) for t in gpu_suite.targets(data, smoke=False)]
    assert verdicts == [("compiled fp16: 3.10×", "met"), ("compiled fp16: 26.0%", "met"), ("0.92", "met"),
                        ("1.60×", "not met"), ("2.50×", "not met")]
    data["sweep"] = [row("eager fp32", "fp32", 10.0, 5.0)]
    data["served"] = {}
    assert {t["verdict"] for t in gpu_suite.targets(data, smoke=False)} == {"not measured"}


def test_the_most_telling_points_run_first():
    points = gpu_suite.point_passes(gpu_suite.BATCHES, gpu_suite.WINDOWS)
    assert points[:3] == [(8, 192), (1, 128), (32, 256)]
    assert sorted(points) == sorted((b, w) for b in gpu_suite.BATCHES for w in gpu_suite.WINDOWS)
    assert gpu_suite.point_passes((1, 2), (16, 24))[0] == (2, 24)


def test_each_section_leaves_the_later_ones_their_reserve():
    budget = gpu_suite.Budget(100.0)
    assert budget.box(30.0, reserve_s=50.0) == 30.0
    assert 49.0 < budget.box(80.0, reserve_s=50.0) <= 50.0
    assert budget.box(10.0, reserve_s=200.0) == 0.0
