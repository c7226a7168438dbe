"""Load test of ``srserve serve``: N concurrent clients for T seconds, batching on vs off, and the
served throughput against the bare backend on the same tiles.

    .venv/bin/python bench/load.py                       # random-weight models of the shipped size
    .venv/bin/python bench/load.py --repository model_repository --model edsr --scale 2
    .venv/bin/python bench/load.py --url http://host:8000 --clients 16 --seconds 60   # an existing server
    python3 bench/load.py --device cuda --clients 16,64 --precision fp16 --json-out load.json   # on a GPU

What it does, in one run so the ratios are side by side:

1. **bare**: the backend alone (same model, device, tile plan and batch size as the server) runs
   the tiles of the test images, grouped by window shape, in batches of ``--batch``; no HTTP,
   no decoding, encoding or stitching. Throughput = output megapixels per second.
2. **served, batching on / off**: ``srserve serve`` in a subprocess (``SR_MAX_BATCH_TILES`` =
   ``--batch``, then 1), ``--clients`` clients each posting the test images in turn for
   ``--seconds`` (requests still running at the end are awaited, bounded by ``--timeout``), for
   each client count of ``--clients`` in turn against the same server. Latency p50/p95/p99,
   requests/s, output MP/s, the mean batch size from ``/metrics``. The result cache is off
   (``SR_CACHE_BYTES=0``): the clients repeat a few images, which it would answer unrun.
3. **served / bare** throughput (the issue's target: >= 0.9) and CPU seconds per output MP of
   the server process vs the bare run. ``busy`` is the fraction of the load's wall time the
   server's inference thread spent in the backend (from ``sr_inference_duration_seconds``):
   near 1 means the serving machinery keeps the backend fed, whatever the machine's noise; the
   backend time per tile in the server vs the bare run shows how much the other work of the
   server and the clients (decoding, encoding, HTTP) slowed the backend down on shared cores.

Useful arithmetic rate: output pixels/s × the model's FLOPs per output pixel
(``srserve.models.flops``; the tiles' overlap is not counted), in GFLOP/s (TFLOP/s on a GPU) and
as a share of the device's peak for the precision run (``srserve.backends.peaks``).

Without ``--repository`` the models are random-weight networks with the shipped EDSR's and
MDSR's hyper-parameters (read from ``model_repository/*/model.json``) in a temporary repository;
speed does not depend on the weights. The images are crops of the Set14 HR
images when the datasets are present, else synthetic.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets" / "benchmark"
SHIPPED = ROOT / "model_repository"
SIZED_LIKE_SHIPPED = ("edsr", "mdsr")  # the models a default run can load


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", help="model repository (default: random-weight models of the shipped size)")
    p.add_argument("--url", help="load an already running server instead (skips bare and batching off)")
    p.add_argument("--model", default="edsr")
    p.add_argument("--scale", default="2", help="scale, or scales the requests cycle through (e.g. 2,3,4)")
    p.add_argument("--mdsr-cross-scale", choices=["on", "off"], default="on",
                   help="server: batch MDSR's body across scales (SR_MDSR_CROSS_SCALE)")
    p.add_argument("--clients", default="8", help="concurrent clients, or counts run in turn, e.g. 16,64 (default 8)")
    p.add_argument("--seconds", type=float, default=20, help="load duration per server config (default 20)")
    p.add_argument("--timeout", type=float, default=120, help="longest wait for one request (default 120)")
    p.add_argument("--batch", type=int, default=4, help="max_batch_tiles with batching on (default 4)")
    p.add_argument("--tile-size", type=int, default=64, help="server tile size (default 64)")
    p.add_argument("--sizes", default="128x128,160x128,192x160", help="LR test image sizes HxW (comma-separated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", help="server backend (default torch; auto, onnxruntime, ...)")
    p.add_argument("--precision", default="fp32", help="fp32 (default), fp16 or bf16 (SR_PRECISION)")
    p.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    p.add_argument("--threads", type=int, help="torch CPU threads for the server and the bare run (SR_THREADS)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--json-out", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    args.client_counts = [int(c) for c in str(args.clients).split(",")]
    return args


# --- inputs -----------------------------------------------------------------------------------
def shipped_size_repository(root: Path) -> Path:
    import torch

    from srserve.models.registry import build_network
    from srserve.models.repository import Repository

    shipped, repo = Repository(SHIPPED), Repository(root)
    for name in SIZED_LIKE_SHIPPED:
        entry = shipped.get(name)  # architecture and hyper-parameters come from model.json
        for i, weights in enumerate(entry.weights):
            torch.manual_seed(i)
            net = build_network(entry.architecture, weights.hparams)
            repo.add_weights(name, entry.architecture, weights.hparams, net.state_dict(), file=weights.file)
    return root


@dataclass(frozen=True)
class Job:
    """One request the clients send: an image at a scale."""

    image: bytes
    scale: int
    out_pixels: int


def make_jobs(sizes: list[tuple[int, int]], scales: list[int]) -> list[Job]:
    """Every image at every scale, interleaved so consecutive requests differ in both."""
    images = test_images(sizes)
    jobs = []
    for j in range(len(scales)):
        for i, (h, w) in enumerate(sizes):
            scale = scales[(i + j) % len(scales)]
            jobs.append(Job(images[i], scale, h * w * scale * scale))
    return jobs


def test_images(sizes: list[tuple[int, int]]) -> list[bytes]:
    from PIL import Image

    sources = sorted((DATASETS / "Set14" / "x2" / "HR").glob("*.png")) if DATASETS.is_dir() else []
    images = []
    for i, (h, w) in enumerate(sizes):
        if sources:
            img = Image.open(sources[i % len(sources)]).convert("RGB")
            img = img.crop((0, 0, min(w, img.width), min(h, img.height))).resize((w, h))
        else:
            rng = np.random.default_rng(i)
            yy, xx = np.mgrid[0:h, 0:w]
            a = np.stack([np.sin(xx / (4 + c) + yy / (6 + c)) for c in range(3)], -1) * 90 + 128
            img = Image.fromarray(np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        images.append(buf.getvalue())
    return images


# --- bare backend -----------------------------------------------------------------------------
def bare_throughput(repository: Path, args, jobs: list["Job"], seconds: float, batch: int) -> dict:
    """Output MP/s of the backend alone on the tiles the server would cut from ``images``, in
    batches of ``batch``, on a dedicated thread as in the server (under CPU contention, PyTorch's
    OpenMP pool behaves differently on the main thread, so measuring there is not comparable)."""
    import torch

    from srserve.models.repository import Repository
    from srserve.pipeline import plan_for
    from srserve.pipeline.imageio import read_image
    from srserve.pipeline.tiling import extract_tiles
    from srserve.service.config import Settings
    from srserve.service.engine import ServedModel, create_model_backend

    settings = Settings(repository=repository, device=args.device, backend=args.backend, threads=args.threads,
                        tile_size=args.tile_size, max_batch_tiles=args.batch, precision=args.precision)
    uniform = settings.torch_device.type == "cuda" and settings.batch_tiles > 1  # as Engine.batching_pays
    model = ServedModel(create_model_backend(args.model, settings, Repository(repository)), args.tile_size, True,
                        uniform_windows=uniform)
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for job in jobs:
        raster = read_image(job.image)
        x = torch.from_numpy(raster.color.astype(np.float32) / 255).permute(2, 0, 1)[None]
        plan = plan_for(model.backend, raster.height, raster.width, job.scale, model.tiling_request(job.scale))
        by_shape.setdefault((job.scale, plan.tile_shape), []).extend(extract_tiles(x, plan))
    out_pixels = sum(job.out_pixels for job in jobs)
    batches = [(scale, torch.stack(tiles[i:i + batch])) for (scale, _), tiles in by_shape.items()
               for i in range(0, len(tiles), batch)]
    result: dict = {}

    def measure() -> None:  # on a thread of its own, like the server's inference thread
        for scale, batch in batches:  # warm-up: every shape once
            model.run_tiles(batch, [scale] * len(batch), None)
        result["precision"] = model.precision
        if args.threads:
            torch.set_num_threads(args.threads)
        rounds, started, cpu0 = 0, time.perf_counter(), process_cpu_seconds(os.getpid())
        while rounds == 0 or time.perf_counter() - started < seconds:
            for scale, batch in batches:
                model.run_tiles(batch, [scale] * len(batch), None)
            rounds += 1
        elapsed, cpu = time.perf_counter() - started, process_cpu_seconds(os.getpid()) - cpu0
        mp = rounds * out_pixels / 1e6
        tiles = rounds * sum(len(b) for _, b in batches)
        result.update(rounds=rounds, seconds=elapsed, tiles_per_round=tiles // rounds, backend_s_per_tile=elapsed / tiles,
                      mp_per_s=mp / elapsed, images_per_s=rounds * len(jobs) / elapsed, cpu_s_per_mp=cpu / mp)

    thread = threading.Thread(target=measure, name="bare-backend")
    thread.start()
    thread.join()
    return result


# --- the server -------------------------------------------------------------------------------
def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_settings(repository: Path, args, batch: int) -> dict[str, str]:
    settings = {"SR_REPOSITORY": str(Path(repository).resolve()), "SR_MODELS": args.model, "SR_DEVICE": args.device,
                "SR_BACKEND": args.backend, "SR_MAX_BATCH_TILES": str(batch), "SR_TILE_SIZE": str(args.tile_size),
                "SR_PRECISION": args.precision, "SR_REQUEST_TIMEOUT_S": str(args.timeout),
                "SR_MAX_INFLIGHT_REQUESTS": str(max(64, 2 * max(args.client_counts))),
                "SR_MDSR_CROSS_SCALE": "true" if args.mdsr_cross_scale == "on" else "false",
                "SR_CACHE_BYTES": "0"}  # the clients repeat their images: measure inference, not the cache
    if args.threads:
        settings["SR_THREADS"] = str(args.threads)
    return settings


class ServerProcess:
    """``srserve serve`` on 127.0.0.1 and a free port, with ``settings`` (``SR_*``) over the
    environment, its output in a temporary file (shown when it does not become ready)."""

    def __init__(self, settings: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SR_LOG_LEVEL": "warning", "SR_JOBS_DIR": tempfile.mkdtemp(prefix="srserve-bench-jobs-"),
               **settings}
        self.log = tempfile.TemporaryFile("w+")
        # python -m, from a neutral folder: srserve may be on PYTHONPATH rather than installed
        # (bench/gpu_suite.sh), and the checkout's own srserve/ folder must not shadow that
        self.proc = subprocess.Popen([sys.executable, "-m", "srserve", "serve", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=tempfile.gettempdir())

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.log.seek(0)
        raise SystemExit(f"server did not become ready:\n{self.log.read()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM (the server drains), SIGKILL after 60 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# --- the load ---------------------------------------------------------------------------------
async def run_load(url: str, args, jobs: list[Job], clients: int, pid: int | None = None) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    served_pixels = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        before = (await client.get("/metrics")).text
        cpu0 = process_cpu_seconds(pid) if pid else float("nan")
        stop_at = time.perf_counter() + args.seconds

        async def one_client(k: int) -> None:
            nonlocal served_pixels
            i = k
            while time.perf_counter() < stop_at:
                job = jobs[i % len(jobs)]
                t0 = time.perf_counter()
                r = await client.post(f"/upscale?model={args.model}&scale={job.scale}&format={args.format}",
                                      content=job.image, headers={"Content-Type": "image/png"})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                    served_pixels += job.out_pixels
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = (process_cpu_seconds(pid) if pid else float("nan")) - cpu0
        after = (await client.get("/metrics")).text
    in_backend = metric_delta(before, after, "sr_inference_duration_seconds_sum")
    busy = in_backend / elapsed
    tiles = metric_delta(before, after, "sr_batch_size_sum")
    calls = metric_delta(before, after, "sr_batch_size_count")
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"requests": len(latencies), "statuses": statuses, "seconds": elapsed,
            "p50_s": float(q[0]), "p95_s": float(q[1]), "p99_s": float(q[2]),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
            "rps": len(latencies) / elapsed, "mp_per_s": served_pixels / elapsed / 1e6,
            "cpu_s_per_mp": cpu / (served_pixels / 1e6) if served_pixels else float("nan"),
            "mean_batch": tiles / calls if calls else float("nan"), "busy": busy,
            "backend_s_per_tile": in_backend / tiles if tiles else float("nan")}


def metric_delta(before: str, after: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    def total(text: str) -> float:
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)

    return total(after) - total(before)


def served(repository: Path, args, batch: int, jobs: list[Job]) -> dict[int, dict]:
    """{clients: result} for each client count, against one server started with ``batch``."""
    server = ServerProcess(server_settings(repository, args, batch))
    try:
        server.wait_ready()
        return {n: asyncio.run(run_load(server.url, args, jobs, n, server.proc.pid)) for n in args.client_counts}
    finally:
        server.stop()


class Rate:
    """Output MP/s as useful FLOP/s and a share of the device's peak (module docstring)."""

    def __init__(self, repository: Path, args, jobs: list[Job]):
        import torch

        from srserve.backends.peaks import device_peak
        from srserve.models.flops import flops_per_output_pixel
        from srserve.models.repository import Repository

        model = Repository(repository).load(args.model, "cpu")
        pixels = sum(job.out_pixels for job in jobs)
        self.flops_per_output_pixel = sum(job.out_pixels * flops_per_output_pixel(model, job.scale)
                                          for job in jobs) / pixels
        self.device = torch.device(args.device).type
        self.peak = device_peak(args.device, args.threads)

    def __call__(self, mp_per_s: float, precision: str) -> dict:
        from srserve.backends.peaks import efficiency

        return efficiency(self.flops_per_output_pixel, mp_per_s * 1e6, self.peak, precision, self.device)

    def text(self, mp_per_s: float, precision: str) -> str:
        from srserve.backends.peaks import format_efficiency

        return format_efficiency(self(mp_per_s, precision), self.device)


def print_row(label: str, r: dict, rate: str = "") -> None:
    print(f"{label:<22} {r['requests']:>6} {r['rps']:>7.2f} {r['mp_per_s']:>8.3f} {r['cpu_s_per_mp']:>8.1f} "
          f"{r['p50_s']:>7.2f} {r['p95_s']:>7.2f} {r['p99_s']:>7.2f} {r['mean_batch']:>6.2f} {r['busy']:>5.2f}  "
          f"{r['statuses']}  {rate}")


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    scales = [int(v) for v in args.scale.split(",")]
    jobs = make_jobs(sizes, scales)
    print(f"model {args.model} x{args.scale}, device {args.device}, backend {args.backend} {args.precision}, tile "
          f"{args.tile_size}, images {args.sizes}, {args.clients} clients x {args.seconds:g}s, torch threads "
          f"{args.threads or __import__('torch').get_num_threads()}, mdsr cross-scale {args.mdsr_cross_scale}")
    if args.url:
        for n in args.client_counts:
            print_row(f"served (--url), {n} cl", asyncio.run(run_load(args.url, args, jobs, n)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(args.repository) if args.repository else shipped_size_repository(Path(tmp) / "repo")
        rate = Rate(repository, args, jobs)
        bare_on = bare_throughput(repository, args, jobs, args.seconds, args.batch)
        on = served(repository, args, args.batch, jobs)
        off = served(repository, args, 1, jobs) if args.batch > 1 else on
        bare_off = bare_throughput(repository, args, jobs, args.seconds, 1) if args.batch > 1 else bare_on
    precision = bare_on["precision"]
    configs = ((args.batch, on, bare_on), (1, off, bare_off))[: 1 + (args.batch > 1)]
    for batch, _, bare in configs:
        print(f"bare backend, batch {batch}: {bare['mp_per_s']:.3f} output MP/s, {rate.text(bare['mp_per_s'], precision)}, "
              f"{bare['cpu_s_per_mp']:.1f} CPU s/MP ({bare['images_per_s']:.2f} images/s, {bare['tiles_per_round']} "
              f"tiles per round, {bare['rounds']} rounds)")
    print(f"{'':<22} {'reqs':>6} {'req/s':>7} {'MP/s':>8} {'CPU s/MP':>8} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'batch':>6} {'busy':>5}  statuses  useful rate")
    for n in args.client_counts:
        for batch, results, _ in configs:
            print_row(f"served, batch {batch}, {n} cl", results[n], rate.text(results[n]["mp_per_s"], precision))
    for n in args.client_counts:
        for batch, results, bare in configs:
            srv = results[n]
            print(f"{n} clients, served/bare, batch {batch}: throughput {srv['mp_per_s'] / bare['mp_per_s']:.2f}, CPU "
                  f"efficiency {bare['cpu_s_per_mp'] / srv['cpu_s_per_mp']:.2f} (target >= 0.9); backend time per "
                  f"tile {srv['backend_s_per_tile']:.3f}s served vs {bare['backend_s_per_tile']:.3f}s bare")
        if args.batch > 1:
            print(f"{n} clients, served batching on/off: throughput {on[n]['mp_per_s'] / off[n]['mp_per_s']:.2f}")
    for result in [bare_on, bare_off] + [r for results in (on, off) for r in results.values()]:
        result.update(rate(result["mp_per_s"], precision))
    record = {"args": {k: v for k, v in vars(args).items()}, "precision": precision,
              "flops_per_output_pixel": rate.flops_per_output_pixel,
              "peak": rate.peak.to_json() if rate.peak else None, "bare_on": bare_on, "bare_off": bare_off,
              "served": {str(n): {"on": on[n], **({"off": off[n]} if args.batch > 1 else {})}
                         for n in args.client_counts}}
    if args.json:
        print(json.dumps(record))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
