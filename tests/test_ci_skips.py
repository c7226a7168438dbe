"""tests/conftest.py's CI rule, run by pytest on generated test files: under CI=true a skipped
deployment test (by file name, or marked docker) fails with its skip reason (an error when it
skipped in a fixture or a skipif); elsewhere, and outside CI, skips stay skips."""
from __future__ import annotations

import sys

import pytest

SKIPPING = """
import pytest

@pytest.fixture
def tool():
    pytest.skip("prometheus not installed")

def test_skips_in_its_body():
    pytest.skip("dockerd cannot start here")

def test_skips_in_a_fixture(tool):
    pass

@pytest.mark.skipif(True, reason="no debootstrap")
def test_skipif():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_passes():
    pass
"""

DOCKER_MARKED = """
import pytest

@pytest.mark.docker
def test_marked():
    pytest.skip("no docker")

def test_unmarked():
    pytest.skip("no dataset")
"""


def run(pytester: pytest.Pytester, monkeypatch, ci: str | None, **files: str) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(**files)
    pytester.makeini("[pytest]\nmarkers =\n    docker: needs a Docker engine\n")
    return pytester.runpytest_inprocess("-rA", plugins=[sys.modules["conftest"]])


@pytest.mark.parametrize("name", ["test_deploy_image", "test_deploy_dashboard", "test_deploy_static"])
def test_skipped_deployment_tests_fail_in_ci(pytester, monkeypatch, name):
    result = run(pytester, monkeypatch, "true", **{name: SKIPPING})
    result.assert_outcomes(failed=1, errors=2, passed=1, xfailed=1)  # a skip during setup fails as an error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for reason in ("prometheus not installed", "dockerd cannot start here", "no debootstrap"):
        result.stdout.fnmatch_lines([f"*CI=true: deployment tests may not skip*{reason}*"])


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_they_skip(pytester, monkeypatch, ci):
    run(pytester, monkeypatch, ci, test_deploy_image=SKIPPING).assert_outcomes(skipped=3, passed=1, xfailed=1)


def test_docker_marker_counts_anywhere_other_skips_stay(pytester, monkeypatch):
    run(pytester, monkeypatch, "true", test_elsewhere=DOCKER_MARKED).assert_outcomes(failed=1, skipped=1)
