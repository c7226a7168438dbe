"""Time to ready of ``srserve serve``: a first start on an empty engine cache, then a second on it.

    .venv/bin/python bench/startup.py                       # the shipped repository, default settings
    .venv/bin/python bench/startup.py --cache DIR --keep    # reuse / keep a cache folder

Each start spawns ``srserve serve`` on a free 127.0.0.1 port with ``SR_ENGINE_CACHE`` set, polls
``/readyz`` every 0.2 s until it answers 200, reads ``/v1/models`` (engine and precision per
model), then stops the server with SIGTERM. Any other ``SR_*`` variable in the environment
applies to both starts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cache: Path, log: Path, timeout: float) -> tuple[float, list]:
    port = free_port()
    env = {**os.environ, "SR_ENGINE_CACHE": str(cache)}
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "srserve"), "serve", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise SystemExit(f"the server did not become ready; see {log}")
                time.sleep(0.2)
            ready = time.monotonic() - started
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["models"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    return ready, [(m["name"], m["backend"], m["precision"]) for m in models]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, help="engine cache folder (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the cache folder")
    p.add_argument("--timeout", type=float, default=900, help="longest wait for one start, s")
    args = p.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="srserve-startup-"))
    try:
        for label in ("first start", "second start"):
            ready, models = start(cache, cache.parent / f"{cache.name}-{label.split()[0]}.log", args.timeout)
            print(f"{label}: ready in {ready:.1f} s; " + ", ".join(f"{n} {b} {p}" for n, b, p in models), flush=True)
    finally:
        if not args.keep and args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
