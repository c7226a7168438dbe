"""The server's domain object, independent of HTTP: lifecycle, admission, one upscale call.

``Service`` owns the ``Engine`` and the metrics. Lifecycle: the app listens at once; models load
and warm up in the background (``state`` "starting" -> "ready" | "failed"). ``drain`` (SIGTERM,
see ``server``) turns new work to 503 and waits for the accepted requests. The HTTP layer
(``app``, ``routes``) only parses requests and formats responses.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Awaitable, Callable

from srserve.models.errors import SRError

from .batching import Ticket
from .config import Settings
from .engine import Engine, UpscaleOptions, Upscaled, UpscaleRequest
from .errors import Cancelled, DeadlineExceeded, ServiceError, Unavailable, classify
from .metrics import Metrics

log = logging.getLogger("srserve.service")

CLIENT_CLOSED = 499  # nginx's status for a client that went away; only counted, never sent


class InternalError(Exception):
    """A bug while serving (logged with its traceback; the client gets a 500 without details)."""


class Service:
    """State shared by the routes: the engine, the lifecycle and the in-flight count."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics(settings.torch_device)
        self.engine = Engine(settings, self.metrics)
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
                      watch: Callable[[Awaitable], Awaitable] | None = None) -> Upscaled:
        """Reads the body, runs it and records the outcome. Raises ``ServiceError`` (4xx/5xx),
        ``Cancelled`` (the client left) or ``InternalError``; ``watch`` wraps the computation
        (the HTTP layer cancels it when the client disconnects)."""
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
                    work = self.engine.upscale(
                        ticket, request, on_model=lambda m: labels.__setitem__(0, m.name),
                        on_job=lambda j: labels.__setitem__(1, str(j.size.scale)))
                    result = await (watch(work) if watch is not None else work)
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
            self.record(*labels, 200)
            self.metrics.request_duration.labels(*labels).observe(time.monotonic() - started)
            self.metrics.input_pixels.labels(result.model).inc(result.input_pixels)
            self.metrics.output_pixels.labels(result.model).inc(result.width * result.height)
            return result
        self.record(*labels, err.status, err.code)
        raise err

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
        }
