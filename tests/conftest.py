"""Shared test configuration."""
from __future__ import annotations

import os

import pytest

pytest_plugins = ("pytester",)  # tests/test_ci_skips.py runs pytest on generated test files


# --- CI: a deployment test that skips is a failure --------------------------------------------
# Under CI=true (set by CI services, and by .ci/run) the container, dashboard and static deployment
# tests must really run: docker/ci-tools.sh installs what they need first, so a skip there means
# the image was never built or the dashboard never queried, and the run must not pass.
DEPLOYMENT_TEST_FILES = frozenset({"test_deploy_image.py", "test_deploy_dashboard.py", "test_deploy_static.py"})


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def is_deployment_test(item: pytest.Item) -> bool:
    return item.path.name in DEPLOYMENT_TEST_FILES or item.get_closest_marker("docker") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail") and running_in_ci() and is_deployment_test(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: deployment tests may not skip (does .ci/run run docker/ci-tools.sh?): {reason}"
# --- end of the CI block -----------------------------------------------------------------------
