"""tests/conftest.py's CI rule, run by pytest (a subprocess, with that conftest as its plugin) on
generated test files: under CI=true a skipped deployment test (by file name, or marked docker)
fails with its skip reason (an error when it skipped in a fixture or a skipif); elsewhere, and
outside CI, skips stay skips."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

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

DEPLOYMENT_FILES = ("test_deploy_image", "test_deploy_dashboard", "test_deploy_static")


def run(pytester: pytest.Pytester, monkeypatch, ci: str | None) -> pytest.RunResult:
    """The three deployment file names with SKIPPING, plus DOCKER_MARKED elsewhere."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(**{name: SKIPPING for name in DEPLOYMENT_FILES}, test_elsewhere=DOCKER_MARKED)
    pytester.makeini("[pytest]\nmarkers =\n    docker: needs a Docker engine\n")
    return pytester.runpytest_subprocess("-p", "conftest", "-p", "no:cacheprovider", "-rA")


def test_skipped_deployment_tests_fail_in_ci(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true")
    # per deployment file: the body skip fails, the fixture skip and the skipif error (setup phase)
    result.assert_outcomes(failed=3 + 1, errors=3 * 2, passed=3, xfailed=3, skipped=1)
    for name in DEPLOYMENT_FILES:
        for reason in ("prometheus not installed", "dockerd cannot start here", "no debootstrap"):
            result.stdout.fnmatch_lines([f"*{name}.py::*CI=true: deployment tests may not skip*{reason}*"])
    result.stdout.fnmatch_lines(["*test_elsewhere.py::test_marked*CI=true*no docker*"])
    result.stdout.fnmatch_lines(["SKIPPED*test_elsewhere.py*no dataset*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_they_skip(pytester, monkeypatch, ci):
    run(pytester, monkeypatch, ci).assert_outcomes(skipped=3 * 3 + 2, passed=3, xfailed=3)
