"""A large job through a SIGKILL of its server: the issue's demonstration, run by hand.

    .venv/bin/python bench/job_sigkill.py                                  # 2048² at ×4, shipped EDSR
    .venv/bin/python bench/job_sigkill.py --side 512 --kill-at 0.5 --tile 128

Starts ``srserve serve`` (the local spool in a temporary directory), posts one job of a
``--side``² image (a Set14 HR image resized with Lanczos when the data sets are present, else
synthetic), prints its progress while it rises, SIGKILLs the server once ``--kill-at`` of the
tiles are done, starts a new server on the same spool, follows the job to the end, then runs
``srserve upscale`` on the same image with the same tiles and prints the largest pixel
difference. Every line is timestamped (seconds since the start).
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import BENCHMARK  # noqa: E402
from server_process import ServerProcess  # noqa: E402

STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {text}", flush=True)


def test_image(side: int) -> bytes:
    source = BENCHMARK / "Set14" / "x4" / "HR"
    files = sorted(source.glob("*.png")) if source.is_dir() else []
    if files:
        img = Image.open(files[0]).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    else:
        yy, xx = np.mgrid[0:side, 0:side]
        pixels = (127 + 120 * np.sin(np.stack([xx / 17, yy / 23, (xx + yy) / 29], -1))).astype(np.uint8)
        img = Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def follow(base: str, job_id: str, stop) -> dict:
    last = None
    while True:
        view = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
        if (view["status"], view["tiles_done"]) != last:
            last = (view["status"], view["tiles_done"])
            say(f"{view['status']:9s} attempt {view['attempts']} tiles {view['tiles_done']}/{view['tiles_total']} "
                f"progress {view['progress']:.3f} eta {view['eta_s']}")
        if stop(view):
            return view
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="edsr")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256, help="LR tile side (server and CLI alike)")
    parser.add_argument("--backend", default="auto", help="engine of the server and of srserve upscale alike")
    parser.add_argument("--kill-at", type=float, default=0.3, help="fraction of tiles done at the SIGKILL")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = tmp / "input.png"
        image.write_bytes(test_image(args.side))
        env = {"SR_MODELS": args.model, "SR_TILE_SIZE": str(args.tile), "SR_MAX_BATCH_TILES": "1",
               "SR_JOBS_DIR": str(tmp / "spool"), "SR_LOG_LEVEL": "warning", "SR_BACKEND": args.backend}
        first = ServerProcess(args.repository, tmp / "first.log", env).start()
        say(f"server 1 ready (pid {first.proc.pid}, SR_BACKEND={args.backend}); posting a {args.side}x{args.side} job at x{args.scale}")
        reply = httpx.post(f"{first.base}/v1/jobs?model={args.model}&scale={args.scale}", content=image.read_bytes(),
                           headers={"Content-Type": "image/png"}, timeout=120)
        job = reply.json()
        say(f"{reply.status_code} {job}")
        follow(first.base, job["id"], lambda v: v["tiles_total"] and v["tiles_done"] >= args.kill_at * v["tiles_total"])
        first.kill()
        say("SIGKILL sent to server 1")
        second = ServerProcess(args.repository, tmp / "second.log", env).start()
        say(f"server 2 ready (pid {second.proc.pid})")
        try:
            final = follow(second.base, job["id"], lambda v: v["status"] in ("done", "failed", "cancelled"))
            result = httpx.get(f"{second.base}/v1/jobs/{job['id']}/result", timeout=300).content
        finally:
            second.kill()
        say(f"job {final['status']}: {final.get('result')}")
        out = tmp / "cli"
        started = time.monotonic()
        subprocess.run([str(Path(sys.executable).parent / "srserve"), "upscale", "--repository", str(args.repository),
                        "--model", args.model, "--scale", str(args.scale), "--tile", str(args.tile), "--backend", args.backend,
                        "-o", str(out),
                        "--quiet", str(image)], check=True)
        say(f"srserve upscale took {time.monotonic() - started:.1f}s")
        served = np.asarray(Image.open(io.BytesIO(result))).astype(np.int16)
        cli = np.asarray(Image.open(next(out.iterdir()))).astype(np.int16)
        say(f"result {served.shape} vs srserve upscale {cli.shape}: max |difference| = {np.abs(served - cli).max()}")


if __name__ == "__main__":
    main()
