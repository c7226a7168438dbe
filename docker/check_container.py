"""Runs the srserve image and checks it end to end (called by docker/test-image.sh).

The container runs as the image's non-root user with the restrictions of the Kubernetes manifests
(read-only root filesystem with a /tmp tmpfs, no capabilities, no privilege escalation) on host
networking bound to 127.0.0.1. Checks, in order: the image runs as non-root and has no compilers;
with the baked-in repository, /readyz turns 200, Docker's HEALTHCHECK reports healthy and
/v1/models lists exactly the shipped models; then, with a small random-weight EDSR repository
mounted over the baked-in one (the documented override), POST /upscale of a real image gives the
right size and matches the host's `srserve upscale` of the same model, a corrupt image gives a
400 JSON error, /metrics counts it all, and SIGTERM during a long request turns /readyz and new
work to 503 while the request still completes, then the container exits 0. Needs DOCKER_HOST set
to the daemon that holds the image.

    python docker/check_container.py --image srserve-test:cpu --name srserve-test
"""
from __future__ import annotations

import argparse
import io
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets" / "benchmark"
DRAIN_TIMEOUT_S = 120  # generous: the long request below must finish inside it on a loaded machine
IMAGE_REPOSITORY = "/opt/srserve/model_repository"  # SR_REPOSITORY in the image
TINY_EDSR = {"n_resblocks": 2, "n_feats": 16, "scale": 2}
MIN_PSNR_DB = 40.0  # container vs host: same code and weights; only tiling/threads may differ


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"[check] {message}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args[:2])}: {done.stderr.strip()}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = 30) -> tuple[int, Message, bytes]:
    """(status, headers with case-insensitive get, body); HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image() -> tuple[str, bytes]:
    """A real photograph when the benchmark sets are there (Set5 LR), else a synthetic one."""
    candidates = sorted((DATASETS / "Set5" / "x4" / "LR").glob("*.png"))
    if candidates:
        return candidates[0].name, candidates[0].read_bytes()
    y, x = np.mgrid[0:64, 0:80]
    array = np.stack([(x * 3) % 256, (y * 4) % 256, ((x + y) * 2) % 256], axis=-1).astype(np.uint8)
    return "synthetic 80x64", png_bytes(array)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def start_container(image: str, name: str, port: int, repository: Path | None = None) -> None:
    """Like the Kubernetes pod: read-only root, /tmp tmpfs, no capabilities; ``repository``
    mounted read-only over the baked-in one."""
    docker("rm", "-f", "-v", name, check=False)
    mount = ["-v", f"{repository}:{IMAGE_REPOSITORY}:ro"] if repository else []
    docker("run", "-d", "--name", name, "--network", "host", *mount,
           "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--health-interval", "2s", "--health-start-period", "300s",
           "-e", "SR_HOST=127.0.0.1", "-e", f"SR_PORT={port}", "-e", f"SR_DRAIN_TIMEOUT_S={DRAIN_TIMEOUT_S}",
           image)


def container_state(name: str) -> dict:
    return json.loads(docker("inspect", "-f", "{{json .State}}", name))


# A hang guard, not a speed test: the baked-in repository warms every shipped model at full tile
# size before /readyz turns 200; that took 545 s on a busy 2-core machine (ESRGAN alone 193 s).
READY_TIMEOUT_S = 1800


def wait_ready(base: str, name: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        state = container_state(name)
        if not state["Running"]:
            raise CheckFailed(f"container exited ({state['ExitCode']}) before ready:\n"
                              + docker("logs", "--tail", "30", name))
        try:
            status, _, _ = http("GET", f"{base}/readyz", timeout=5)
            if status == 200:
                return time.monotonic() - start
            status, _, body = http("GET", f"{base}/healthz", timeout=5)
            if status != 200:  # startup failed: the server stays up to say why
                raise CheckFailed(f"/healthz {status}: {body[:300].decode(errors='replace')}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise CheckFailed(f"/readyz not 200 after {timeout_s:.0f}s:\n" + docker("logs", "--tail", "30", name))


def wait_healthy(name: str, timeout_s: float = 60) -> None:
    """The image's HEALTHCHECK (python urllib on /healthz) as Docker runs it."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        health = container_state(name).get("Health") or {}
        if health.get("Status") == "healthy":
            return
        time.sleep(1)
    raise CheckFailed(f"Docker healthcheck never turned healthy: {json.dumps(health)[:500]}")


def check_shipped_models(models: dict) -> None:
    """The baked-in repository is the shipped model_repository/ (plus the built-in bicubic)."""
    served = {m["name"] for m in models["models"]}
    shipped = {p.parent.name for p in (REPO / "model_repository").glob("*/model.json")}
    if served != shipped | {"bicubic"}:
        raise CheckFailed(f"/v1/models serves {sorted(served)}, the shipped repository has {sorted(shipped)}")
    log(f"baked-in repository: {sorted(served)}")


def tiny_repository(root: Path) -> Path:
    """A small random-weight EDSR, to serve a real network without trained weights."""
    import torch

    from srserve.models.registry import build_network
    from srserve.models.repository import Repository

    torch.manual_seed(0)
    net = build_network("edsr", TINY_EDSR)
    Repository(root).add_weights("tiny-edsr", "edsr", TINY_EDSR, net.state_dict(), description="check_container")
    # The container's user (uid 10001) must read a mounted repository; safetensors writes 0600.
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def host_reference(repository: Path, model: str, scale: int, image: bytes) -> np.ndarray:
    """The same upscale by the host's srserve (same repository, same code)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.png", Path(tmp) / "out.png"
        source.write_bytes(image)
        subprocess.run([sys.executable, "-m", "srserve", "upscale", "--repository", str(repository),
                        "--model", model, "--scale", str(scale), "--quiet", str(source), str(target)],
                       check=True, cwd=REPO)
        return np.asarray(Image.open(target).convert("RGB"))


def check_upscale(base: str, repository: Path, model: str, scale: int) -> None:
    name, image = test_image()
    lr = Image.open(io.BytesIO(image))
    status, headers, body = http("POST", f"{base}/upscale?model={model}&scale={scale}", image, "image/png",
                                 timeout=300)
    if status != 200:
        raise CheckFailed(f"POST /upscale {model} x{scale}: {status} {body[:300]!r}")
    result = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    expected_size = (lr.height * scale, lr.width * scale)
    if result.shape[:2] != expected_size:
        raise CheckFailed(f"/upscale returned {result.shape[1]}x{result.shape[0]}, expected "
                          f"{expected_size[1]}x{expected_size[0]}")
    if headers.get("X-Model") != model or headers.get("X-Scale") != str(scale):
        raise CheckFailed(f"headers X-Model/X-Scale: {headers.get('X-Model')}/{headers.get('X-Scale')}")
    reference = host_reference(repository, model, scale, image)
    quality = psnr(result, reference)
    if quality < MIN_PSNR_DB:
        raise CheckFailed(f"container result differs from the host's: PSNR {quality:.1f} dB < {MIN_PSNR_DB}")
    log(f"POST /upscale {model} x{scale} of {name} ({lr.width}x{lr.height}): {result.shape[1]}x"
        f"{result.shape[0]}, backend {headers.get('X-Backend')}, {headers.get('X-Inference-Ms')} ms; "
        f"PSNR vs host {quality:.1f} dB")


def check_bad_image(base: str, model: str) -> None:
    status, headers, body = http("POST", f"{base}/upscale?model={model}", b"\x89PNG\r\n\x1a\nnot really",
                                 "image/png")
    if status != 400 or "json" not in headers.get("Content-Type", ""):
        raise CheckFailed(f"corrupt image: expected a 400 JSON error, got {status} {body[:200]!r}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(match.group(2)), True
    if not found:
        raise CheckFailed(f"/metrics has no {name}{labels or ''}")
    return total


def check_metrics(base: str, model: str, scale: int) -> None:
    status, _, body = http("GET", f"{base}/metrics")
    text = body.decode()
    if status != 200:
        raise CheckFailed(f"/metrics: {status}")
    ok = metric_value(text, "sr_requests_total", model=model, scale=str(scale), status="200")
    bad = metric_value(text, "sr_requests_total", status="400")
    durations = metric_value(text, "sr_request_duration_seconds_count", model=model)
    output = metric_value(text, "sr_output_pixels_total", model=model)
    metric_value(text, "sr_build_info")
    if ok < 1 or bad < 1 or durations < 1 or output <= 0:
        raise CheckFailed(f"/metrics did not count the requests: 200={ok} 400={bad} durations={durations} "
                          f"output_pixels={output}")
    log(f"/metrics: sr_requests_total 200={ok:.0f} 400={bad:.0f}, output pixels {output:.0f}")


def check_drain(base: str, name: str) -> None:
    """SIGTERM with a long request in flight: readyz 503, the request completes, exit 0."""
    side = 1024  # bicubic x4 to 4096x4096: seconds of work, so the drain window is observable
    rng = np.random.default_rng(0)
    image = png_bytes(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    outcome: dict = {}

    def long_request() -> None:
        outcome["status"], outcome["headers"], outcome["body"] = http(
            "POST", f"{base}/upscale?model=bicubic&scale=4", image, "image/png", timeout=300)

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 60
    while metric_value(http("GET", f"{base}/metrics")[2].decode(), "sr_inflight_requests") < 1:
        if time.monotonic() > deadline or not worker.is_alive():
            raise CheckFailed("the long request never showed in sr_inflight_requests")
        time.sleep(0.05)
    signalled = time.monotonic()
    docker("kill", "--signal", "TERM", name)
    saw_draining = False
    while worker.is_alive():
        try:
            status, _, _ = http("GET", f"{base}/readyz", timeout=2)
            saw_draining = saw_draining or status == 503
            if status == 503:
                status, _, _ = http("POST", f"{base}/upscale?model=bicubic&scale=2", png_bytes(
                    np.zeros((8, 8, 3), np.uint8)), "image/png")
                if status != 503:
                    raise CheckFailed(f"new work while draining: expected 503, got {status}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    worker.join()
    if outcome.get("status") != 200:
        raise CheckFailed(f"in-flight request during drain: {outcome.get('status')} {outcome.get('body', b'')[:200]!r}")
    size = Image.open(io.BytesIO(outcome["body"])).size
    if size != (side * 4, side * 4):
        raise CheckFailed(f"in-flight request during drain returned {size}")
    if not saw_draining:
        raise CheckFailed("/readyz never answered 503 between SIGTERM and the end of the in-flight request")
    while container_state(name)["Running"]:
        if time.monotonic() - signalled > DRAIN_TIMEOUT_S + 15:
            raise CheckFailed("container still running after the drain timeout")
        time.sleep(0.2)
    code = container_state(name)["ExitCode"]
    if code != 0:
        raise CheckFailed(f"container exited {code} after SIGTERM:\n" + docker("logs", "--tail", "20", name))
    log(f"SIGTERM with a request in flight: /readyz 503 and new work 503 while draining, the request "
        f"completed (200, {size[0]}x{size[1]}), exit 0 {time.monotonic() - signalled:.1f}s after the signal")


def check_image_config(image: str) -> None:
    user = docker("image", "inspect", "-f", "{{.Config.User}}", image)
    if user.split(":")[0] in ("", "0", "root"):
        raise CheckFailed(f"image runs as root (User={user!r})")
    compilers = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                       "for c in gcc cc c++ g++ clang make; do command -v $c; done; true")
    if compilers:
        raise CheckFailed(f"compilers in the final image: {compilers.split()}")
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6
    log(f"image {image}: user {user}, no compilers, {size_mb:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--name", default="srserve-test")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        check_image_config(args.image)
        start_container(args.image, args.name, port)
        log(f"ready after {wait_ready(base, args.name):.1f}s on {base}")
        wait_healthy(args.name)
        log("Docker HEALTHCHECK: healthy")
        status, _, body = http("GET", f"{base}/v1/models")
        if status != 200:
            raise CheckFailed(f"/v1/models: {status}")
        check_shipped_models(json.loads(body))
        docker("rm", "-f", "-v", args.name)

        with tempfile.TemporaryDirectory() as tmp:
            repository = tiny_repository(Path(tmp) / "repository")
            start_container(args.image, args.name, port, repository)
            log(f"mounted repository: ready after {wait_ready(base, args.name):.1f}s")
            check_upscale(base, repository, "tiny-edsr", TINY_EDSR["scale"])
            check_bad_image(base, "tiny-edsr")
            check_metrics(base, "tiny-edsr", TINY_EDSR["scale"])
            check_drain(base, args.name)
    except CheckFailed as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        docker("rm", "-f", "-v", args.name, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
