"""What every test module shares: the data-set path, a free port, waiting on a condition, one
intra-op thread, the tiny-model repository factory (``tiny_repo``), and the CI rule that a
deployment or browser test may not skip.

Test modules import the plain helpers (``from conftest import DATASETS, free_port, wait_until``);
fixtures are found by pytest.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch

pytest_plugins = ("pytester",)  # tests/test_ci_skips.py runs pytest on generated test files

ROOT = Path(__file__).resolve().parents[1]
# ../shared/datasets next to the clone (a developer's or CI's machine), or $SR_DATASETS
DATASETS = Path(os.environ.get("SR_DATASETS") or ROOT.parent / "shared" / "datasets").resolve()  # absolute: a browser needs it
BENCHMARK = DATASETS / "benchmark"
NO_DATASETS = f"benchmark datasets not found at {BENCHMARK} (a user's clone has no ../shared; set SR_DATASETS)"
needs_datasets = pytest.mark.skipif(not BENCHMARK.is_dir(), reason=NO_DATASETS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition") -> None:
    """Polls ``condition()`` until it is true (instead of sleeping and hoping); fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(autouse=True, scope="module")
def one_thread(request):
    """Tiny tensors on a shared 2-core machine: one intra-op thread is many times faster than
    two fighting other processes (measured 1.3 s vs 27 s for the same test). Modules running
    full-size models set ``USES_ALL_THREADS = True``."""
    if getattr(request.module, "USES_ALL_THREADS", False):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_repo(tmp_path):
    """Factory: a real repository of tiny random-weight models (``pipeline_nets.TINY`` names)."""
    from pipeline_nets import tiny_repository

    def make(names=None, root: Path | None = None):
        return tiny_repository(root or tmp_path / "repo", names=names)

    return make


# --- CI: a deployment test that skips is a failure --------------------------------------------
# Under CI=true (set by CI services, and by .ci/run) the container, dashboard and static deployment
# tests must really run: docker/ci-tools.sh installs what they need first, so a skip there means
# the image was never built or the dashboard never queried, and the run must not pass.
DEPLOYMENT_TEST_FILES = frozenset({"test_deploy_image.py", "test_deploy_dashboard.py", "test_deploy_static.py"})


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def is_deployment_test(item: pytest.Item) -> bool:
    return item.path.name in DEPLOYMENT_TEST_FILES or any(item.get_closest_marker(m) for m in ("docker", "browser"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail") and running_in_ci() and is_deployment_test(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: deployment tests may not skip (does .ci/run run docker/ci-tools.sh?): {reason}"
# --- end of the CI block -----------------------------------------------------------------------
