"""Jobs across real ``srserve serve`` processes: a job survives SIGKILL of its server (the
restarted server finishes it from the spool, progress rising, the result equal to ``srserve
upscale``), and with ``SR_JOBS_BACKEND=redis://`` two servers share jobs: one posted to the
first is read and cancelled from the second, and when the server running a job is killed the
other finishes it after the lease expires. Redis is a real ``redis-server`` on a free loopback
port with its own directory (Debian's package; docker/ci-tools.sh installs it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from server_process import ServerProcess
from service_fixtures import image_bytes, make_repository, max_diff, metric

PNG = {"Content-Type": "image/png"}
SLOW = {"SR_MODELS": "edsr", "SR_MAX_BATCH_TILES": "1", "SR_THREADS": "1"}  # one tile per batch: seconds of work


def view(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()


def follow(base: str, job_id: str, until, timeout_s: float = 300) -> list[dict]:
    """Polls the job until ``until(view)``; every view seen, in order."""
    seen, deadline = [], time.monotonic() + timeout_s
    while True:
        seen.append(view(base, job_id))
        if until(seen[-1]):
            return seen
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.05)


def mid_way(v: dict) -> bool:
    assert v["status"] in ("queued", "running"), v  # finishing before the kill would void the test
    return 0 < v["tiles_done"] < v["tiles_total"]


def finished(v: dict) -> bool:
    return v["status"] in ("done", "failed", "cancelled")


def cli_upscale(repo: Path, image: Path, out: Path) -> bytes:
    done = subprocess.run([str(Path(sys.executable).parent / "srserve"), "upscale", "--repository", str(repo),
                           "--model", "edsr", "--scale", "2", "--tile", "16", "-o", str(out), "--quiet", str(image)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return next(out.iterdir()).read_bytes()


def test_job_survives_sigkill_and_restart(tmp_path):
    repo = make_repository(tmp_path / "repo")
    env = {**SLOW, "SR_JOBS_DIR": str(tmp_path / "spool")}
    image = tmp_path / "input.png"
    image.write_bytes(image_bytes(512, 512, seed=3))  # 1024 tiles of 16 px
    first = ServerProcess(repo, tmp_path / "first.log", env).start()
    job = httpx.post(f"{first.base}/v1/jobs?model=edsr&scale=2", content=image.read_bytes(), headers=PNG).json()
    before = follow(first.base, job["id"], mid_way)
    first.kill()

    second = ServerProcess(repo, tmp_path / "second.log", env).start()
    try:
        after = follow(second.base, job["id"], finished)
        result = httpx.get(f"{second.base}/v1/jobs/{job['id']}/result", timeout=60)
    finally:
        second.kill()
    assert after[-1]["status"] == "done" and after[-1]["attempts"] == 2, after[-1]
    running = [v["tiles_done"] for v in after if v["status"] == "running" and v["attempts"] == 2]
    assert running == sorted(running) and len(set(running)) > 1  # progress rises on the restarted server
    assert 0 < before[-1]["tiles_done"] < before[-1]["tiles_total"] == 1024
    assert result.status_code == 200
    assert max_diff(result.content, cli_upscale(repo, image, tmp_path / "cli")) <= 1


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server not installed (apt-get install redis-server; docker/ci-tools.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    log = open(tmp_path / "redis.log", "w")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                             "--save", "", "--appendonly", "no", "--daemonize", "no"], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    import redis

    client = redis.Redis.from_url(url)
    while True:
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "redis.log").read_text()
        time.sleep(0.1)
    yield url
    client.close()
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def quiet(log: str) -> str:
    """A server log without the test's own polling."""
    return "\n".join(line for line in log.splitlines() if "GET /" not in line)[-4000:]


def worker_pid(v: dict) -> int:
    """The process id in a job's ``worker`` (HOST:PID:RANDOM/INDEX)."""
    return int(v["worker"].split(":")[1])


@pytest.mark.redis
def test_two_servers_share_jobs_through_redis(tmp_path, redis_url):
    repo = make_repository(tmp_path / "repo")
    # a lease long enough that a loaded 2-core machine never lets a live server's lease lapse
    env = {**SLOW, "SR_JOBS_BACKEND": redis_url, "SR_JOB_LEASE_S": "5", "SR_LOG_LEVEL": "info"}
    servers = [ServerProcess(repo, tmp_path / f"server{i}.log", env).start() for i in range(2)]
    try:
        by_pid = {server.proc.pid: server for server in servers}
        body = image_bytes(512, 512, seed=5)
        job = httpx.post(f"{servers[0].base}/v1/jobs?model=edsr&scale=2", content=body, headers=PNG).json()
        seen = follow(servers[1].base, job["id"], mid_way)  # read from the other server
        runner = by_pid[worker_pid(seen[-1])]
        survivor = next(s for s in servers if s is not runner)
        runner.kill()
        after = follow(survivor.base, job["id"], finished)
        result = httpx.get(f"{survivor.base}/v1/jobs/{job['id']}/result", timeout=60)
        sync = httpx.post(f"{survivor.base}/upscale?model=edsr&scale=2", content=body, headers=PNG, timeout=300)

        # cancelled on one server while the other runs it: its tiles leave the running server's queues
        restarted = ServerProcess(repo, tmp_path / "restarted.log", env).start()
        servers.append(restarted)
        by_pid[restarted.proc.pid] = restarted
        # self-ensemble: 8 x 576 tiles, far more than can run between seeing progress and the DELETE
        second = httpx.post(f"{survivor.base}/v1/jobs?model=edsr&scale=2&self_ensemble=true",
                            content=image_bytes(384, 384, seed=6), headers=PNG).json()
        running_on = by_pid[worker_pid(follow(restarted.base, second["id"], mid_way)[-1])]
        other = restarted if running_on is survivor else survivor
        cancelled = httpx.delete(f"{other.base}/v1/jobs/{second['id']}").json()
        assert cancelled["status"] == "cancelled", cancelled
        deadline = time.monotonic() + 60
        while metric(metrics := httpx.get(f"{running_on.base}/metrics").text, "sr_jobs_finished_total",
                     status="cancelled") < 1:
            assert time.monotonic() < deadline, f"the running server did not drop the cancelled job:\n" \
                f"{quiet(running_on.log())}\n--- the other:\n{quiet(other.log())}"
            time.sleep(0.1)
    finally:
        for server in servers:
            server.kill()
    assert after[-1]["status"] == "done" and after[-1]["attempts"] == 2, after[-1]
    assert any(v["status"] == "running" and worker_pid(v) == survivor.proc.pid for v in after)  # taken over
    assert result.status_code == 200 and max_diff(result.content, sync.content) <= 1
    assert cancelled["status"] == "cancelled"
    assert "was cancelled or taken over; dropping its tiles" in running_on.log()  # noticed mid-job
    assert metric(metrics, "sr_queue_depth", model="edsr", scale="2") == 0


def test_unreachable_redis_or_busy_spool_stop_the_server_in_one_line(tmp_path):
    repo = make_repository(tmp_path / "repo")
    srserve = str(Path(sys.executable).parent / "srserve")
    base = {**os.environ, "SR_REPOSITORY": str(repo), "SR_MODELS": "edsr"}
    nobody = f"redis://:secret@127.0.0.1:{free_port()}/0"
    unreachable = subprocess.run([srserve, "serve", "--port", str(free_port())], capture_output=True, text=True,
                                 timeout=120, env={**base, "SR_JOBS_BACKEND": nobody})
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert "cannot reach the jobs backend redis://***@127.0.0.1" in unreachable.stderr
    assert "secret" not in unreachable.stderr
    holder = ServerProcess(repo, tmp_path / "holder.log", {"SR_MODELS": "edsr"}).start()
    try:
        busy = subprocess.run([srserve, "serve", "--port", str(free_port())], capture_output=True, text=True,
                              timeout=120, env={**base, "SR_JOBS_DIR": holder.env["SR_JOBS_DIR"]})
    finally:
        holder.kill()
    assert busy.returncode == 1 and "Traceback" not in busy.stderr
    assert f"used by another server (pid {holder.proc.pid})" in busy.stderr
