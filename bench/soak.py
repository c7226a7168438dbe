"""Soak test of ``srserve serve``: N clients for T minutes of mixed good and bad requests against a
server it starts itself (127.0.0.1, a free port), watching the server's memory.

    .venv/bin/python bench/soak.py                                  # 8 clients, 10 minutes, model_repository
    .venv/bin/python bench/soak.py --minutes 2 --models edsr,mdsr,vdsr,bicubic

Each client loops until the time is up (then its last request is awaited, bounded by
``--timeout``), drawing from its own seeded generator: a good request (a served model, one of its
scales or an ``outscale``, an image of 16-96 px a side, PNG/JPEG/WebP out, now and then the
self-ensemble) or, with probability ``--bad``, one of ``BAD_REQUESTS`` (corrupt and truncated
images, wrong media types, unknown models, invalid or repeated parameters, an empty body, a
multipart form without its field, a PNG header declaring 100000 x 100000 pixels).

Printed per minute of the run: requests, responses by status, p50/p99 latency of the 200s, and
the server's RSS (psutil, sampled every second: at the minute's end and its maximum); then the
totals, the RSS slope over the whole run and over its second half (MB/min, least squares over
the samples: a leak keeps the second-half slope up, a warming heap levels off), and how the
server exited on SIGTERM. Exit status 1 on any unexpected answer: a 500/504, a transport error, a
good request not answered 200 or a bad one not answered with its 4xx (503 with Retry-After, the
overload answer, is accepted everywhere), or a non-zero exit of the server.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import ROOT, ServerProcess, test_images  # noqa: E402  (bench/ is not a package)

SIZES = [(16, 16), (24, 40), (48, 32), (64, 64), (80, 56), (96, 96), (33, 71), (57, 19)]
FORMATS = ("png", "jpeg", "webp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", default=str(ROOT / "model_repository"), help="default: model_repository/")
    p.add_argument("--models", help="SR_MODELS for the server (default: the whole repository + bicubic)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--minutes", type=float, default=10, help="duration of the load (default 10)")
    p.add_argument("--bad", type=float, default=0.25, help="share of bad requests (default 0.25)")
    p.add_argument("--ensemble", type=float, default=0.05, help="share of good requests with self_ensemble")
    p.add_argument("--timeout", type=float, default=120, help="longest wait for one request (default 120)")
    p.add_argument("--ready-timeout", type=float, default=1800, help="longest wait for /readyz (default 1800)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", action="append", default=[], metavar="SR_NAME=VALUE",
                   help="extra server setting (repeatable), e.g. SR_TILE_SIZE=64")
    return p.parse_args(argv)


# --- requests ---------------------------------------------------------------------------------
@dataclass
class Request:
    kind: str  # "good" or the name of the bad case
    query: str
    body: bytes
    content_type: str
    expected: tuple[int, ...] = (200,)  # for bad cases: the statuses a correct server may give


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` followed by an empty IDAT: decoders learn
    the size from the header (and must refuse it) before there is any pixel to read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def multipart_without_image(image: bytes) -> tuple[bytes, str]:
    boundary = "soakboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"picture\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def bad_requests(image: bytes, model: str) -> list[Request]:
    """Hostile and malformed inputs, each with the 4xx statuses that are a correct answer."""
    form, form_type = multipart_without_image(image)
    m = f"model={model}"
    return [
        Request("corrupt_png", f"{m}&scale=2", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png", (400,)),
        Request("random_bytes", f"{m}&scale=2", random.Random(1).randbytes(2048), "image/jpeg", (400,)),
        Request("truncated_png", f"{m}&scale=2", image[: len(image) // 2], "image/png", (400,)),
        Request("empty_body", f"{m}&scale=2", b"", "image/png", (400,)),
        Request("text_body", f"{m}&scale=2", b"not an image", "text/plain", (415,)),
        Request("unknown_model", "model=no-such-model&scale=2", image, "image/png", (404,)),
        Request("unserved_scale", f"{m}&scale=7", image, "image/png", (422,)),
        Request("scale_not_a_number", f"{m}&scale=abc", image, "image/png", (422,)),
        Request("negative_outscale", f"{m}&outscale=-1", image, "image/png", (422,)),
        Request("bad_format", f"{m}&scale=2&format=gif", image, "image/png", (422,)),
        Request("bad_quality", f"{m}&scale=2&format=jpeg&quality=1000", image, "image/png", (422,)),
        Request("repeated_scale", f"{m}&scale=2&scale=3", image, "image/png", (422,)),
        Request("long_model_name", "model=" + "x" * 10_000 + "&scale=2", image, "image/png", (404, 414, 422, 431)),
        Request("multipart_no_image", f"{m}&scale=2", form, form_type, (422,)),
        Request("huge_declared_size", f"{m}&scale=2", png_declaring(100_000, 100_000), "image/png", (413,)),
    ]


@dataclass
class Mix:
    """What the clients draw from: served models and their scales, test images, bad cases."""
    models: dict[str, list[int]]
    images: dict[tuple[int, int], bytes]
    bad: list[Request]
    bad_share: float
    ensemble_share: float

    def draw(self, rng: random.Random) -> Request:
        if rng.random() < self.bad_share:
            return rng.choice(self.bad)
        model = rng.choice(sorted(self.models))
        size = rng.choice(SIZES)
        scales = self.models[model]
        if rng.random() < 0.15:
            scale_query = f"outscale={rng.uniform(1.1, max(scales)):.2f}"
        else:
            scale_query = f"scale={rng.choice(scales)}"
        query = f"model={model}&{scale_query}&format={rng.choice(FORMATS)}"
        if rng.random() < self.ensemble_share:
            query += "&self_ensemble=true"
        return Request("good", query, self.images[size], "image/png")


# --- the run ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    minute: int
    kind: str
    status: int  # 0: transport error
    seconds: float
    unexpected: bool


@dataclass
class Record:
    started: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)


def sample_rss(pid: int, record: Record, stop: threading.Event) -> None:
    import psutil

    process = psutil.Process(pid)
    while not stop.is_set():
        try:
            record.rss.append((time.monotonic() - record.started, process.memory_info().rss))
        except psutil.Error:
            return
        stop.wait(1.0)


async def run_clients(url: str, mix: Mix, args, record: Record) -> None:
    import httpx

    stop_at = record.started + args.minutes * 60
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:

        async def one_client(k: int) -> None:
            rng = random.Random(args.seed * 1000 + k)
            while time.monotonic() < stop_at:
                req = mix.draw(rng)
                t0 = time.monotonic()
                try:
                    reply = await client.post(f"/upscale?{req.query}", content=req.body,
                                              headers={"Content-Type": req.content_type})
                    status = reply.status_code
                except httpx.HTTPError:
                    status = 0
                t1 = time.monotonic()
                unexpected = status not in (*req.expected, 503)  # 503 (overloaded, Retry-After) is an answer
                record.outcomes.append(Outcome(int((t1 - record.started) // 60), req.kind, status, t1 - t0, unexpected))

        await asyncio.gather(*(one_client(k) for k in range(args.clients)))


def served_models(url: str) -> dict[str, list[int]]:
    import httpx

    info = httpx.get(f"{url}/v1/models", timeout=30).json()
    return {m["name"]: list(m["scales"]) for m in info["models"]}


# --- the report -------------------------------------------------------------------------------
def slope_mb_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return float("nan")
    t = np.array([s for s, _ in samples]) / 60
    rss = np.array([r for _, r in samples]) / 1e6
    return float(np.polyfit(t, rss, 1)[0])


def print_report(record: Record, minutes: float) -> None:
    by_minute: dict[int, list[Outcome]] = defaultdict(list)
    for o in record.outcomes:
        by_minute[min(o.minute, int(np.ceil(minutes)) - 1)].append(o)  # the tail's last requests count in the last minute
    rss_by_minute: dict[int, list[int]] = defaultdict(list)
    for t, rss in record.rss:
        rss_by_minute[int(t // 60)].append(rss)
    statuses = sorted({o.status for o in record.outcomes})
    header = f"{'min':>3} {'requests':>8} " + " ".join(f"{s or 'conn':>5}" for s in statuses)
    print(header + f" {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>8} {'max MB':>8}")
    for minute in sorted(by_minute):
        outcomes = by_minute[minute]
        counts = Counter(o.status for o in outcomes)
        ok = [o.seconds * 1000 for o in outcomes if o.status == 200]
        p50, p99 = np.percentile(ok, [50, 99]) if ok else (float("nan"), float("nan"))
        rss = rss_by_minute.get(minute, [0])
        print(f"{minute + 1:>3} {len(outcomes):>8} " + " ".join(f"{counts.get(s, 0):>5}" for s in statuses)
              + f" {p50:>8.0f} {p99:>8.0f} {rss[-1] / 1e6:>8.0f} {max(rss) / 1e6:>8.0f}")
    total = Counter(o.status for o in record.outcomes)
    print(f"total: {len(record.outcomes)} requests; by status: "
          + ", ".join(f"{s or 'transport error'}: {n}" for s, n in sorted(total.items())))
    kinds = Counter((o.kind, o.status) for o in record.outcomes if o.kind != "good")
    print("bad inputs (kind: status x count): " + ", ".join(f"{k}: {s} x{n}" for (k, s), n in sorted(kinds.items())))
    unexpected = Counter((o.kind, o.status) for o in record.outcomes if o.unexpected)
    print("unexpected answers: " + (", ".join(f"{k} -> {s or 'transport error'} x{n}"
                                               for (k, s), n in sorted(unexpected.items())) or "none"))
    half = [s for s in record.rss if s[0] >= record.rss[-1][0] / 2] if record.rss else []
    if record.rss:
        print(f"RSS: start {record.rss[0][1] / 1e6:.0f} MB, end {record.rss[-1][1] / 1e6:.0f} MB, "
              f"max {max(r for _, r in record.rss) / 1e6:.0f} MB; slope {slope_mb_per_min(record.rss):+.2f} MB/min "
              f"over the run, {slope_mb_per_min(half):+.2f} MB/min over its second half ({len(record.rss)} samples)")


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = {"SR_REPOSITORY": str(Path(args.repository).resolve()), "SR_REQUEST_TIMEOUT_S": str(args.timeout),
                **dict(s.split("=", 1) for s in args.setting)}
    if args.models:
        settings["SR_MODELS"] = args.models
    server = ServerProcess(settings)
    started = time.monotonic()
    try:
        server.wait_ready(args.ready_timeout)
        print(f"server ready after {time.monotonic() - started:.1f}s on {server.url} (pid {server.proc.pid}); "
              f"{args.clients} clients for {args.minutes:g} min, {args.bad:.0%} bad requests, seed {args.seed}",
              flush=True)
        models = served_models(server.url)
        sizes = {size: image for size, image in zip(SIZES, test_images(SIZES))}
        mix = Mix(models, sizes, bad_requests(sizes[(64, 64)], sorted(models)[0]), args.bad, args.ensemble)
        print("models: " + ", ".join(f"{name} x{'/'.join(map(str, s))}" for name, s in sorted(models.items())),
              flush=True)
        record = Record(started=time.monotonic())
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(server.proc.pid, record, stop), daemon=True)
        sampler.start()
        try:
            asyncio.run(run_clients(server.url, mix, args, record))
        finally:
            stop.set()
            sampler.join()
    finally:
        t0 = time.monotonic()
        code = server.stop()
    print_report(record, args.minutes)
    print(f"server exit status {code} after SIGTERM ({time.monotonic() - t0:.1f}s)")
    return 1 if any(o.unexpected for o in record.outcomes) or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
