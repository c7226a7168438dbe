"""Prometheus metrics, in a registry of their own per app (two apps in one process do not mix).

The names are an interface: the Grafana dashboard is built on exactly these.

    sr_requests_total{model,scale,status}                     counter, every /upscale answer
    sr_request_duration_seconds{model,scale}                  histogram, successful requests end to end
    sr_queue_wait_seconds{model,scale,backend}                histogram, per tile: enqueue -> batch start
    sr_inference_duration_seconds{model,scale,backend}        histogram, per backend call (one batch)
    sr_batch_size{model,backend}                              histogram, tiles per backend call
    sr_inflight_requests                                      gauge, /upscale requests being served
    sr_queue_depth{model,scale}                               gauge, tiles waiting for a batch
    sr_input_pixels_total{model}, sr_output_pixels_total{model}  counters, served images
    sr_errors_total{reason}                                   counter, error code of failed requests
    sr_build_info{version,torch,device,backends}              gauge = 1
    sr_cache_hits_total, sr_cache_misses_total                counters, result cache lookups (requests and jobs)
    sr_cache_bytes                                            gauge, encoded results held by the cache
    sr_jobs{status}                                           gauge, jobs in the store by status (all servers
                                                              sharing it: aggregate with max, not sum)
    sr_job_queue_depth                                        gauge, jobs waiting to run (store-wide)
    sr_jobs_created_total                                     counter, jobs accepted by this server
    sr_jobs_finished_total{status}                            counter, jobs this server ended (done/failed/cancelled)
    sr_job_duration_seconds{model,scale}                      histogram, claim -> done of jobs run here
    sr_gpu_memory_allocated_bytes{device}, sr_gpu_memory_reserved_bytes{device}  on CUDA, at scrape time

``model``/``scale`` are the served model's name and native scale ("" when the request named
no served model or no valid scale), so a client cannot grow the label sets. Batches that mix
MDSR scales have scale="mixed".
"""
from __future__ import annotations

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# seconds: a small tile on a GPU takes milliseconds, a large image on a CPU tens of seconds
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class GpuMemoryCollector:
    """Reads CUDA memory when scraped (no background thread, nothing on CPU)."""

    def __init__(self, device: torch.device):
        self.device = device

    def collect(self):
        if self.device.type != "cuda" or not torch.cuda.is_available():
            return
        label = str(self.device)
        allocated = GaugeMetricFamily("sr_gpu_memory_allocated_bytes", "CUDA memory held by tensors",
                                      labels=["device"])
        allocated.add_metric([label], torch.cuda.memory_allocated(self.device))
        reserved = GaugeMetricFamily("sr_gpu_memory_reserved_bytes", "CUDA memory reserved by the caching allocator",
                                     labels=["device"])
        reserved.add_metric([label], torch.cuda.memory_reserved(self.device))
        yield allocated
        yield reserved


class Metrics:
    def __init__(self, device: torch.device | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sr_requests", "Upscale requests by outcome", ["model", "scale", "status"], registry=r)
        self.request_duration = Histogram("sr_request_duration_seconds", "Successful upscale requests, end to end",
                                          ["model", "scale"], buckets=DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("sr_queue_wait_seconds", "Time a tile waits before its batch runs",
                                    ["model", "scale", "backend"], buckets=QUEUE_BUCKETS, registry=r)
        self.inference = Histogram("sr_inference_duration_seconds", "Backend time per batch",
                                   ["model", "scale", "backend"], buckets=DURATION_BUCKETS, registry=r)
        self.batch_size = Histogram("sr_batch_size", "Tiles per backend call", ["model", "backend"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge("sr_inflight_requests", "Upscale requests being served", registry=r)
        self.queue_depth = Gauge("sr_queue_depth", "Tiles waiting for a batch", ["model", "scale"], registry=r)
        self.input_pixels = Counter("sr_input_pixels", "Input pixels of served images", ["model"], registry=r)
        self.output_pixels = Counter("sr_output_pixels", "Output pixels of served images", ["model"], registry=r)
        self.errors = Counter("sr_errors", "Failed requests by reason", ["reason"], registry=r)
        self.build_info = Gauge("sr_build_info", "Build and runtime information", ["version", "torch", "device",
                                                                                     "backends"], registry=r)
        self.cache_hits = Counter("sr_cache_hits", "Result cache hits (answered without inference)", registry=r)
        self.cache_misses = Counter("sr_cache_misses", "Result cache misses", registry=r)
        self.cache_bytes = Gauge("sr_cache_bytes", "Encoded results held by the result cache", registry=r)
        self.jobs = Gauge("sr_jobs", "Jobs in the job store by status (store-wide)", ["status"], registry=r)
        self.job_queue_depth = Gauge("sr_job_queue_depth", "Jobs waiting to run (store-wide)", registry=r)
        self.jobs_created = Counter("sr_jobs_created", "Jobs accepted by this server", registry=r)
        self.jobs_finished = Counter("sr_jobs_finished", "Jobs this server ended, by status", ["status"], registry=r)
        self.job_duration = Histogram("sr_job_duration_seconds", "Jobs run here, claim to done",
                                      ["model", "scale"], buckets=JOB_BUCKETS, registry=r)
        for status in ("done", "failed", "cancelled"):
            self.jobs_finished.labels(status)
        if device is not None and device.type == "cuda":
            r.register(GpuMemoryCollector(device))

    def set_build_info(self, version: str, device: str, backends: list[str]) -> None:
        self.build_info.clear()
        self.build_info.labels(version, torch.__version__, device, ",".join(sorted(set(backends)))).set(1)

    def cache_lookups(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def job_finished(self, status: str, model: str, scale: str, seconds: float | None) -> None:
        self.jobs_finished.labels(status).inc()
        if seconds is not None:
            self.job_duration.labels(model, scale).observe(seconds)

    def set_job_stats(self, stats: dict) -> None:
        for status, count in stats["statuses"].items():
            self.jobs.labels(status).set(count)
        self.job_queue_depth.set(stats["queued"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
