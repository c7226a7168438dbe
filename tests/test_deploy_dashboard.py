"""The Grafana dashboard against real data: a real ``srserve serve`` (tiny random-weight models)
and a real Prometheus on 127.0.0.1 scraping it with the project's own scrape config (targets
rewritten to loopback, 1 s interval), a short bounded load with some bad requests, then every
PromQL expression of docker/grafana/dashboards/srserve.json and every template-variable query run
through Prometheus's HTTP API: each must return data. Grafana itself is not installable here; its
`$__rate_interval` and variables are substituted the way Grafana does with "All" selected."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port
from service_fixtures import image_bytes, make_repository

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "srserve.json"
SCRAPE_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
RATE_WINDOW = "1m"  # covers the whole load below
GPU_ONLY_PREFIX = "sr_gpu_"  # gauges the service exports on CUDA only
# (model, query, height, width): several models and scales, MDSR's multi-scale head included
LOAD = [("edsr", "scale=2", 24, 20), ("mdsr", "scale=2", 20, 18), ("mdsr", "scale=3", 18, 22),
        ("mdsr", "scale=4", 16, 16), ("bicubic", "scale=4", 30, 26), ("vdsr", "scale=3", 20, 20)]
BAD = [  # (query, body, content type, expected status)
    ("model=nope&scale=2", image_bytes(8, 8), "image/png", 404),
    ("model=edsr&scale=2", b"\x89PNG\r\n\x1a\ncorrupt", "image/png", 400),
    ("model=edsr&scale=5", image_bytes(8, 8), "image/png", 422),
    ("model=edsr&scale=2", b"%PDF-1.4", "application/pdf", 415),
]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{url} never answered 200:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def service(tmp_path):
    repo = make_repository(tmp_path / "repo")
    port = free_port()
    env = {**os.environ, "SR_REPOSITORY": str(repo), "SR_BACKEND": "torch", "SR_MODELS": "edsr,mdsr,vdsr,bicubic",
           "SR_TILE_SIZE": "16", "SR_MAX_BATCH_TILES": "8", "SR_MAX_DELAY_MS": "20", "SR_LOG_LEVEL": "warning",
           "SR_JOBS_DIR": str(tmp_path / "jobs")}
    log = tmp_path / "srserve.log"
    proc = start([str(Path(sys.executable).parent / "srserve"), "serve", "--port", str(port)], log, env)
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/readyz", proc, log)
    yield base, port
    stop(proc)


def loopback_scrape_config(service_port: int, prometheus_port: int) -> dict:
    """docker/prometheus/prometheus.yml with its targets on 127.0.0.1 and a 1 s interval."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    ports = {"srserve": service_port, "prometheus": prometheus_port}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [f"127.0.0.1:{ports[job['job_name']]}"]
    return config


@pytest.fixture
def prometheus(tmp_path, service):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install -y prometheus, or docker/ci-tools.sh)")
    _, service_port = service
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_scrape_config(service_port, port)))
    log = tmp_path / "prometheus.log"
    proc = start([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], log)
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/-/ready", proc, log, timeout_s=60)
    yield base
    stop(proc)


def query(prometheus: str, expr: str) -> list[dict]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert reply["status"] == "success", f"{expr}: {reply}"
    return reply["data"]["result"]


def wait_until_scraped(prometheus: str, expr: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not query(prometheus, expr):
        assert time.monotonic() < deadline, f"Prometheus never saw {expr}"
        time.sleep(0.5)


def run_load(base: str) -> None:
    with httpx.Client(base_url=base, timeout=120) as client:
        for round_ in range(4):
            for i, (model, scale_query, height, width) in enumerate(LOAD):
                body = image_bytes(height + round_, width, seed=10 * round_ + i)
                reply = client.post(f"/upscale?model={model}&{scale_query}", content=body,
                                    headers={"Content-Type": "image/png"})
                assert reply.status_code == 200, reply.text
            repeat = client.post(f"/upscale?model={LOAD[0][0]}&{LOAD[0][1]}", headers={"Content-Type": "image/png"},
                                 content=image_bytes(LOAD[0][2] + round_, LOAD[0][3], seed=10 * round_))
            assert repeat.headers["x-cache"] == "hit", repeat.headers  # the round's first request again
            run_job(client, image_bytes(20, 20, seed=100 + round_))
            for scale_query, body, content_type, status in BAD:
                reply = client.post(f"/upscale?{scale_query}", content=body, headers={"Content-Type": content_type})
                assert reply.status_code == status, (scale_query, reply.status_code, reply.text)
            time.sleep(1.0)  # spread over several scrapes so that rate() has points


def run_job(client: httpx.Client, body: bytes) -> None:
    job = client.post("/v1/jobs?model=edsr&scale=2", content=body, headers={"Content-Type": "image/png"}).json()
    deadline = time.monotonic() + 60
    while client.get(job["links"]["self"]).json()["status"] != "done":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)


def grafana_substitute(expr: str) -> str:
    """What Grafana sends with every variable on "All" (allValue .*)."""
    return (expr.replace("$__rate_interval", RATE_WINDOW).replace("$model", ".*").replace("$scale", ".*"))


def has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def queries_without_data(prometheus: str, targets: list[tuple[str, str]]) -> list[str]:
    return [f"{title}: {expr} -> {result}" for title, expr in targets
            if not has_finite_value(result := query(prometheus, grafana_substitute(expr)))]


def test_every_dashboard_query_returns_data(service, prometheus):
    base, _ = service
    wait_until_scraped(prometheus, 'up{job="srserve"} == 1')
    run_load(base)
    wait_until_scraped(prometheus, 'sr_requests_total{status="415"}')

    device = json.loads(httpx.get(f"{base}/v1/models").text)["batching"]["device"]
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [(panel["title"], target["expr"]) for panel in dashboard["panels"] if panel["type"] != "row"
               for target in panel["targets"]]
    gpu_only = [expr for _, expr in targets if GPU_ONLY_PREFIX in expr and not device.startswith("cuda")]
    checked = [(title, expr) for title, expr in targets if expr not in gpu_only]
    # rate() needs two scrapes after the last request: poll until every query has data (or give up)
    deadline = time.monotonic() + 60
    while (empty := queries_without_data(prometheus, checked)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    assert len(checked) >= 20
    # only the GPU-memory panel may stay empty, and only on a CPU server
    assert all("sr_gpu_memory" in e for e in gpu_only) and len(gpu_only) <= 2

    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        metric, label = parse_label_values(variable["query"]["query"])
        reply = httpx.get(f"{prometheus}/api/v1/label/{label}/values",
                          params={"match[]": grafana_substitute(metric)}).json()
        assert reply["status"] == "success" and reply["data"], (variable["name"], reply)
    models = httpx.get(f"{prometheus}/api/v1/label/model/values", params={"match[]": "sr_requests_total"}).json()
    assert {"edsr", "mdsr", "vdsr", "bicubic"} <= set(models["data"])


def parse_label_values(text: str) -> tuple[str, str]:
    """label_values(METRIC{...}, LABEL) -> (selector, label)."""
    assert text.startswith("label_values(") and text.endswith(")"), text
    selector, label = text[len("label_values("):-1].rsplit(",", 1)
    return selector.strip(), label.strip()
