"""The CPU image built and run for real by docker/test-image.sh: a private dockerd, a debootstrap
base, an offline `docker build`, then the container checked end to end (readyz, HEALTHCHECK,
shipped models, a mounted repository, POST /upscale equal to the host's result, errors,
/metrics, SIGTERM drain, exit 0) and everything removed. Skips, with the script's reason, where
it cannot run (no root, no dockerd, no debootstrap, or a daemon that cannot start)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIPPED = 77
TIMEOUT_S = 3600  # measured here: 5 minutes with a cached base; 19 minutes without it, on a busy machine


@pytest.mark.slow
@pytest.mark.docker
def test_cpu_image_builds_serves_and_drains():
    proc = subprocess.Popen(["bash", str(REPO / "docker" / "test-image.sh")], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHON": sys.executable})
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script's trap removes the daemon and its data root
        _, stderr = proc.communicate(timeout=300)
        pytest.fail(f"docker/test-image.sh took over {TIMEOUT_S}s:\n{stderr[-3000:]}")
    report = "\n".join(line for line in stderr.splitlines() if line.startswith(("[test-image", "[check", "    ")))
    if proc.returncode == SKIPPED:
        pytest.skip(next(line for line in stderr.splitlines() if "SKIP:" in line))
    assert proc.returncode == 0, report + "\n" + stderr[-3000:]
    print(report)
