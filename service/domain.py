"""The server's domain object, independent of HTTP: lifecycle, admission, one upscale call.

``Service`` owns the ``Engine``, the result cache, the job manager (``jobs``) and the metrics.
Lifecycle: the app listens at once; models load and warm up in the background (``state``
"starting" -> "ready" | "failed"; job workers start at "ready"). ``drain`` (SIGTERM, see
``server``) turns new work to 503 and waits for the accepted requests; ``stop`` hands running
jobs back to the job queue. The HTTP layer (``app``, ``routes``) only parses requests and
formats responses.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable

from srserve.models.errors import SRError

from .batching import Ticket
from .cache import ResultCache, body_digest, cache_key
from .config import Settings
from .engine import Engine, UpscaleOptions, Upscaled, UpscaleRequest
from .errors import Cancelled, DeadlineExceeded, ServiceError, Unavailable, classify
from .jobs import JobManager
from .metrics import Metrics

log = logging.getLogger("srserve.service")

CLIENT_CLOSED = 499  # nginx's status for a client that went away; only counted, never sent
NOT_MODIFIED = 304  # the client already holds the result (If-None-Match)


class InternalError(Exception):
    """A bug while serving (logged with its traceback; the client gets a 500 without details)."""


@dataclass
class Served:
    """The answer to one upscale call: the image (None when the caller already holds the result
    with this ``key``), the result cache key, and whether the cache answered."""

    result: Upscaled | None
    key: str
    cache_hit: bool


class Service:
    """State shared by the routes: the engine, the lifecycle and the in-flight count."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics(settings.torch_device)
        self.engine = Engine(settings, self.metrics)
        self.cache = ResultCache(settings.cache_bytes)
        self.metrics.cache_bytes.set_function(lambda: self.cache.bytes)
        self.jobs = JobManager(settings, self.engine, self.cache, self.metrics)
        self.state = "starting"  # -> ready | failed; ready -> draining
        self.failure = ""
        self.inflight = 0
        self.readers = 0  # requests whose body is still arriving
        self._idle = asyncio.Event()
        self._idle.set()
        self._startup: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.engine.start()
        await asyncio.get_running_loop().run_in_executor(None, self.jobs.open)
        self._startup = asyncio.create_task(self._load_and_warm())

    async def _load_and_warm(self) -> None:
        started = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.load)
            if self.settings.warmup:
                await self.engine.warmup()
        except Exception as exc:  # noqa: BLE001 - reported by /healthz and /readyz, and logged
            self.state, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.error("startup failed: %s", self.failure, exc_info=not isinstance(exc, SRError))
            return
        if self.state == "starting":
            self.state = "ready"
            self.jobs.start_workers()
        log.info("ready: %d models in %.1fs (%s)", len(self.engine.models), time.monotonic() - started,
                 ", ".join(self.engine.models))

    async def wait_started(self) -> None:
        if self._startup is not None:
            await asyncio.shield(self._startup)

    def begin_drain(self) -> None:
        if self.state != "draining":
            log.info("draining: %d request(s) in flight", self.inflight)
        self.state = "draining"

    async def drain(self, timeout: float) -> bool:
        """Refuses new work and waits for the accepted requests; True when all finished."""
        self.begin_drain()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("drain timeout: %d request(s) still in flight", self.inflight)
            return False

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
        await self.jobs.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)

    # --- admission ----------------------------------------------------------------------------
    def check_available(self) -> None:
        """503 unless ready (starting, draining or failed say so, with a Retry-After)."""
        if self.state != "ready":
            code, detail, retry = {
                "starting": ("starting", "models are loading; retry shortly", 5),
                "draining": ("draining", "the server is shutting down; retry on another instance", 1),
                "failed": ("unavailable", f"startup failed: {self.failure}", 30),
            }[self.state]
            raise Unavailable(code, detail, retry_after=retry)

    @contextmanager
    def body_reader(self):
        """One of ``max_body_readers`` places for a request whose body is still arriving; admission
        to inference happens only once the body is complete (``inflight_slot``)."""
        self.check_available()
        if self.readers >= self.settings.max_body_readers:
            raise Unavailable("overloaded", f"{self.readers} uploads in progress (limit "
                              f"{self.settings.max_body_readers}); retry later", retry_after=2)
        self.readers += 1
        try:
            yield
        finally:
            self.readers -= 1

    @contextmanager
    def inflight_slot(self):
        """One of ``max_inflight_requests`` slots for the duration of a request."""
        self.check_available()
        if self.inflight >= self.settings.max_inflight_requests:
            raise Unavailable("overloaded", f"{self.inflight} requests in flight (limit "
                              f"{self.settings.max_inflight_requests}); retry later", retry_after=2)
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
            if not self.inflight:
                self._idle.set()

    def record(self, model: str, scale: str, status: int, reason: str | None = None) -> None:
        self.metrics.requests.labels(model, scale, str(status)).inc()
        if reason:
            self.metrics.errors.labels(reason).inc()

    # --- /upscale -----------------------------------------------------------------------------
    async def upscale(self, read_body: Callable[[], Awaitable[bytes]], options: UpscaleOptions,
                      watch: Callable[[Awaitable], Awaitable] | None = None,
                      holds: Callable[[str], bool] | None = None) -> Served:
        """Reads the body, answers from the result cache or runs it, and records the outcome.
        Raises ``ServiceError`` (4xx/5xx), ``Cancelled`` (the client left) or ``InternalError``;
        ``watch`` wraps the computation (the HTTP layer cancels it when the client disconnects);
        ``holds(key)`` true means the caller already has this result: nothing is run or sent."""
        started = time.monotonic()
        labels = ["", ""]
        ticket = Ticket(deadline=started + self.settings.body_timeout_s + self.settings.request_timeout_s)
        try:
            with self.body_reader():  # the upload holds no inference slot while it arrives
                body = await read_body()
            with self.inflight_slot():
                ticket.deadline = time.monotonic() + self.settings.request_timeout_s
                async with asyncio.timeout(self.settings.request_timeout_s):
                    request = UpscaleRequest.of(body, options)
                    identity = self.engine.result_identity(request)
                    labels[0] = identity["model"]
                    labels[1] = str(identity["scale"] or "")  # known before any work: a client leaving early counts
                    key = cache_key(body_digest(request.body), identity)
                    served = self._from_cache(key, holds)
                    if served is None:
                        work = self.engine.upscale(
                            ticket, request, on_model=lambda m: labels.__setitem__(0, m.name),
                            on_job=lambda j: labels.__setitem__(1, str(j.size.scale)))
                        served = Served(await (watch(work) if watch is not None else work), key, False)
                        self.cache.put(key, served.result)
        except TimeoutError:
            self.engine.scheduler.cancel(ticket)
            err = DeadlineExceeded(f"not finished within {self.settings.request_timeout_s:g}s")
        except Cancelled:
            self.engine.scheduler.cancel(ticket)
            self.record(*labels, CLIENT_CLOSED, "client_disconnected")
            raise
        except Exception as exc:  # noqa: BLE001 - user errors become 4xx, the rest 500
            self.engine.scheduler.cancel(ticket)
            err = exc if isinstance(exc, ServiceError) else classify(exc)
            if err is None:
                log.exception("internal error serving /upscale")
                self.record(*labels, 500, "internal")
                raise InternalError() from exc
        else:
            result = served.result
            if result is None:
                self.record(labels[0], labels[1], NOT_MODIFIED)
                return served
            self.record(result.model, str(result.scale), 200)
            self.metrics.request_duration.labels(result.model, str(result.scale)).observe(time.monotonic() - started)
            self.metrics.input_pixels.labels(result.model).inc(result.input_pixels)
            self.metrics.output_pixels.labels(result.model).inc(result.width * result.height)
            return served
        self.record(*labels, err.status, err.code)
        raise err

    def _from_cache(self, key: str, holds: Callable[[str], bool] | None) -> Served | None:
        """A hit (the cached image, no inference; ``inference_ms`` 0), the caller's own copy
        (``holds``), or None: run it. Counts hits and misses when the cache is on."""
        if holds is not None and holds(key):
            return Served(None, key, True)
        if not self.cache.enabled:
            return None
        cached = self.cache.get(key)
        self.metrics.cache_lookups(cached is not None)
        return None if cached is None else Served(dataclasses.replace(cached, inference_ms=0.0), key, True)

    # --- /v1/jobs ------------------------------------------------------------------------------
    async def create_job(self, read_body: Callable[[], Awaitable[bytes]], options: UpscaleOptions,
                         api_key: str | None):
        """Accepts a job (503 unless ready, or when the job store is full); the record, stored."""
        self.check_available()
        with self.body_reader():
            body = await read_body()
        return await self.jobs.create(body, dataclasses.asdict(options), api_key)

    # --- /v1/models ---------------------------------------------------------------------------
    def describe(self) -> dict:
        s = self.settings
        return {
            "default_model": self.engine.default_model, "default_scale": s.default_scale, "state": self.state,
            "models": [m.describe() for m in self.engine.models.values()],
            "batching": {"device": str(self.engine.device), "max_batch_tiles": s.batch_tiles,
                         "max_delay_ms": s.max_delay_ms, "max_queued_tiles": s.max_queued_tiles,
                         "max_inflight_requests": s.max_inflight_requests},
            "limits": {"max_body_bytes": s.max_body_bytes, "max_pixels": s.max_pixels,
                       "request_timeout_s": s.request_timeout_s},
            "jobs": {"backend": s.public()["jobs_backend"], "max_pixels": s.job_max_pixels,
                     "max_body_bytes": s.job_max_body_bytes, "ttl_s": s.job_ttl_s, "workers": s.job_workers},
            "cache": {"max_bytes": self.cache.max_bytes, "bytes": self.cache.bytes, "entries": len(self.cache)},
        }
