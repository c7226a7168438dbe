"""A real ``srserve serve`` process (uvicorn on 127.0.0.1, a free port): concurrent mixed requests
equal serial ones, metrics over HTTP, a client that disconnects has its tiles dropped, and
SIGTERM during load finishes every accepted request, answers 503 meanwhile, and exits 0."""
from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx
import pytest

from server_process import ServerProcess
from service_fixtures import image_bytes, make_repository, max_diff, metric, metric_sum, mixed_requests

PNG = {"Content-Type": "image/png"}


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(make_repository(tmp_path / "repo"), tmp_path / "server.log").start()
    yield process.proc, process.base
    process.kill()


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
    # (the whole request is sent, then the connection closed at once: no client-side timeout to race)
    body = image_bytes(160, 160, seed=6)  # 100 tiles x 8 transforms: far longer than noticing the close
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as gone:
        gone.sendall(b"POST /upscale?model=mdsr&scale=4&self_ensemble=true HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.monotonic() + 30
    while metric(httpx.get(f"{base}/metrics").text, "sr_errors_total", reason="client_disconnected") < 1:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.1)
    after_disconnect = httpx.get(f"{base}/metrics").text
    assert metric_sum(after_disconnect, "sr_queue_depth") == 0
    # counted once as 499; its labels depend on how far the request got (a busy server may see the
    # close while still reading the body, before the model is known)
    assert metric_sum(after_disconnect, "sr_requests_total", status="499") == 1

    async def drain():
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            body = image_bytes(96, 96, seed=5)  # 36 tiles each: seconds of work for the accepted requests
            accepted = [asyncio.create_task(client.post("/upscale?model=mdsr&scale=4", content=body, headers=PNG))
                        for _ in range(6)]
            while metric((await client.get("/metrics")).text, "sr_inflight_requests") < 6:
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            ready = await client.get("/readyz")
            while ready.status_code == 200:  # the signal handler runs on the server's loop: poll for it
                await asyncio.sleep(0.05)
                ready = await client.get("/readyz")
            refused = await client.post("/upscale?model=edsr", content=image_bytes(8, 8), headers=PNG)
            return ready, refused, await asyncio.gather(*accepted)

    ready, refused, accepted = asyncio.run(drain())
    assert ready.status_code == 503
    assert refused.status_code == 503 and refused.json()["error"] == "draining" and "retry-after" in refused.headers
    assert [r.status_code for r in accepted] == [200] * 6
    assert all(max_diff(r.content, accepted[0].content) <= 1 for r in accepted)  # one image, six batch positions
    assert proc.wait(timeout=60) == 0
