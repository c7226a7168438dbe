"""A real ``srserve serve`` process (uvicorn on 127.0.0.1, a free port): concurrent mixed requests
equal serial ones, metrics over HTTP, a client that disconnects has its tiles dropped, and
SIGTERM during load finishes every accepted request, answers 503 meanwhile, and exits 0."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service_fixtures import image_bytes, make_repository, max_diff, metric, metric_sum, mixed_requests

PNG = {"Content-Type": "image/png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    repo = make_repository(tmp_path / "repo")
    port = free_port()
    env = {**os.environ, "SR_REPOSITORY": str(repo), "SR_BACKEND": "torch", "SR_TILE_SIZE": "16",
           "SR_MAX_BATCH_TILES": "8", "SR_MAX_DELAY_MS": "20", "SR_DRAIN_TIMEOUT_S": "60", "SR_LOG_LEVEL": "warning"}
    log = open(tmp_path / "server.log", "w+")
    cmd = [str(Path(sys.executable).parent / "srserve"), "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"server did not become ready:\n{log.read()[-3000:]}")
        time.sleep(0.3)
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_real_server_concurrent_requests_metrics_and_sigterm_drain(server):
    proc, base = server
    requests = mixed_requests(32)

    async def load():
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            serial = [await client.post(f"/upscale?{q}", content=b, headers=PNG) for q, b in requests]
            concurrent = await asyncio.gather(*(client.post(f"/upscale?{q}", content=b, headers=PNG)
                                                for q, b in requests))
            return serial, concurrent, (await client.get("/metrics")).text

    serial, concurrent, metrics = asyncio.run(load())
    for (query, _), s, c in zip(requests, serial, concurrent):
        assert s.status_code == c.status_code == 200, (query, s.text, c.text)
        assert max_diff(s.content, c.content) <= 1, query
    assert metric_sum(metrics, "sr_requests_total", status="200") == 64
    assert metric_sum(metrics, "sr_batch_size_sum") > metric_sum(metrics, "sr_batch_size_count")  # batches > 1 tile

    # a client that gives up: its request is cancelled and its queued tiles leave the queues
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/upscale?model=mdsr&scale=4&self_ensemble=true", content=image_bytes(96, 96, seed=6),
                   headers=PNG, timeout=1.0)
    deadline = time.monotonic() + 30
    while metric(httpx.get(f"{base}/metrics").text, "sr_errors_total", reason="client_disconnected") < 1:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.1)
    after_disconnect = httpx.get(f"{base}/metrics").text
    assert metric_sum(after_disconnect, "sr_queue_depth") == 0
    assert metric(after_disconnect, "sr_requests_total", model="mdsr", scale="4", status="499") == 1

    async def drain():
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            body = image_bytes(96, 96, seed=5)  # 36 tiles each: seconds of work for the accepted requests
            accepted = [asyncio.create_task(client.post("/upscale?model=mdsr&scale=4", content=body, headers=PNG))
                        for _ in range(6)]
            while metric((await client.get("/metrics")).text, "sr_inflight_requests") < 6:
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            ready = await client.get("/readyz")
            refused = await client.post("/upscale?model=edsr", content=image_bytes(8, 8), headers=PNG)
            return ready, refused, await asyncio.gather(*accepted)

    ready, refused, accepted = asyncio.run(drain())
    assert ready.status_code == 503
    assert refused.status_code == 503 and refused.json()["error"] == "draining" and "retry-after" in refused.headers
    assert [r.status_code for r in accepted] == [200] * 6
    assert all(max_diff(r.content, accepted[0].content) <= 1 for r in accepted)  # one image, six batch positions
    assert proc.wait(timeout=60) == 0
