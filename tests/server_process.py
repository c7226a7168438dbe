"""Real ``srserve serve`` processes for tests: started on a free 127.0.0.1 port with tiny models,
waited for until ``/readyz`` answers 200, killed at the end."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port

SRSERVE = str(Path(sys.executable).parent / "srserve")


class ServerProcess:
    """Tiny tiles and batches, a spool of its own, the result cache off (``env`` overrides)."""

    def __init__(self, repository: Path, log: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.env = {**os.environ, "SR_REPOSITORY": str(repository), "SR_BACKEND": "torch", "SR_TILE_SIZE": "16", "SR_MAX_BATCH_TILES": "8",
                    "SR_MAX_DELAY_MS": "20", "SR_DRAIN_TIMEOUT_S": "60", "SR_LOG_LEVEL": "warning",
                    "SR_JOBS_DIR": str(log.parent / f"jobs-{self.port}"), "SR_CACHE_BYTES": "0", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> "ServerProcess":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([SRSERVE, "serve", "--port", str(self.port)], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"server did not become ready:\n{self.log()[-3000:]}")
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no drain, no shutdown hook (what a crash or an OOM kill does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
