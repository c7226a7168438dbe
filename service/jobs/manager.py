"""Jobs as the domain sees them: create, look up, cancel, fetch the result, and the workers that
run queued jobs through the engine's scheduler (as ``BACKGROUND`` tickets, behind interactive
requests).

A worker loops: ``claim`` a job from the store, read its input, answer from the result cache or
run ``Engine.upscale`` with no deadline, and ``finish`` (or ``fail``) it. While it runs, a
heartbeat renews the lease every ``lease/3`` and records progress at least every
``PROGRESS_INTERVAL_S``; a heartbeat refused by the store means the job was cancelled (here or on
another server) or taken over, and its tiles leave the scheduler's queues. A job that killed its
server ``MAX_ATTEMPTS`` times is failed rather than retried forever. On shutdown running jobs go
back to the queue (``release``) for the next server.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from srserve.pipeline.imageio import probe

from ..batching import BACKGROUND, Ticket
from ..cache import ResultCache, body_digest, cache_key
from ..config import Settings
from ..engine import Engine, Upscaled, UpscaleRequest
from ..errors import Cancelled, ServiceError, Unavailable, classify
from ..metrics import Metrics
from .record import DONE, JobRecord, StoreFull, key_hash, new_job_id
from .store import JobStore, open_store

log = logging.getLogger("srserve.service")

PROGRESS_INTERVAL_S = 0.5  # how often a running job's tiles_done reaches the store
IDLE_POLL_S = 0.5  # an idle worker asks the store for work this often (jobs created elsewhere)
SWEEP_INTERVAL_S = 5.0  # expiry sweep and job metrics
MAX_ATTEMPTS = 3
FULL_RETRY_AFTER_S = 30


class JobNotFound(ServiceError):
    status, code = 404, "not_found"


class JobNotReady(ServiceError):
    status, code = 404, "not_ready"


class JobExpired(ServiceError):
    status, code = 410, "expired"


@dataclass
class RunningJob:
    """A job running here: the worker holding its lease, its scheduler ticket, and an event set
    when a client cancels it."""

    owner: str
    ticket: Ticket
    cancelled: asyncio.Event


@dataclass
class JobResult:
    record: JobRecord
    result: Upscaled
    key: str


class JobManager:
    def __init__(self, settings: Settings, engine: Engine, cache: ResultCache, metrics: Metrics):
        self.settings = settings
        self.engine = engine
        self.cache = cache
        self.metrics = metrics
        self.store: JobStore | None = None
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{new_job_id()[:8]}"  # + "/N" per worker
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="sr-jobs")
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._running: dict[str, RunningJob] = {}
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Opens the store (blocking; at startup, so a wrong URL or a busy spool fails early)."""
        if self.store is None:
            self.store = open_store(self.settings.jobs_backend, self.settings.jobs_path)

    def start_workers(self) -> None:
        """Starts running jobs (once the models are ready)."""
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.settings.job_workers)]
        self._tasks.append(asyncio.create_task(self._maintain()))

    async def stop(self) -> None:
        """Stops the workers; their running jobs go back to the queue for the next server."""
        self._stopping = True
        for running in self._running.values():
            self.engine.scheduler.cancel(running.ticket)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.store is not None:
            await self._io(self.store.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _ask(self, fn, *args):
        """A store call for a client: the store being unreachable is a 503, not a 500."""
        try:
            return await self._io(fn, *args)
        except (StoreFull, ServiceError):
            raise
        except Exception as exc:  # noqa: BLE001 - sqlite3/redis errors: the store is down or broken
            log.error("job store error: %s: %s", type(exc).__name__, exc)
            raise Unavailable("jobs_unavailable", f"the job store is unavailable ({type(exc).__name__}); "
                              "retry later", retry_after=5) from None

    # --- the API's side ---------------------------------------------------------------------------
    async def create(self, body: bytes, params: dict, api_key: str | None) -> JobRecord:
        """Validates (model, scale, format, image header, pixel limit), then stores the job
        durably; raises ``ServiceError`` (4xx, or 503 when the store is full)."""
        try:
            request = UpscaleRequest(body=b"", **params)
            self.engine.result_identity(request)
            width, height, _ = await self.engine.in_io(probe, body, self.settings.job_max_pixels)
            self.engine.output_size(self.engine.served_model(request.model), height, width, request.scale,
                                    request.outscale)  # SR_MAX_OUTPUT_PIXELS before the 202
        except Exception as exc:  # noqa: BLE001 - user errors become 4xx, the rest is a bug
            err = classify(exc)
            if err is None:
                raise
            raise err from None
        record = JobRecord(id=new_job_id(), params=params, created_at=time.time(), input_bytes=len(body),
                           key_hash=key_hash(api_key))
        try:
            await self._ask(self.store.create, record, body, self.settings.jobs_max_bytes)
        except StoreFull as exc:
            raise Unavailable("jobs_full", f"the job store is full ({exc}); retry later",
                              retry_after=FULL_RETRY_AFTER_S) from None
        self.metrics.jobs_created.inc()
        self._wake.set()
        return record

    async def get(self, job_id: str, api_key: str | None) -> JobRecord:
        """The record, or 404 for an unknown id and for a job created with another key."""
        record = await self._ask(self.store.get, job_id)
        if record is None or (self.settings.api_keys and record.key_hash != key_hash(api_key)):
            raise JobNotFound(f"no job {job_id!r}")
        return record

    async def cancel(self, job_id: str, api_key: str | None) -> JobRecord:
        await self.get(job_id, api_key)
        record = await self._ask(self.store.cancel, job_id, time.time(), self.settings.job_ttl_s)
        running = self._running.get(job_id)
        if running is not None:  # running here: its tiles leave the queues now, not at the next heartbeat
            self.engine.scheduler.cancel(running.ticket)
            running.cancelled.set()
        return record

    async def result(self, job_id: str, api_key: str | None) -> JobResult:
        """The finished image: 404 before done (or when failed/cancelled), 410 after expiry."""
        record = await self.get(job_id, api_key)
        if record.expired:
            raise JobExpired(f"job {job_id}'s result expired (kept {self.settings.job_ttl_s:g}s)")
        if record.status != DONE:
            reason = f": {record.detail}" if record.detail else ""
            raise JobNotReady(f"job {job_id} is {record.status}{reason}")
        data = await self._ask(self.store.read_result, job_id)
        if data is None:  # swept between the two reads
            raise JobExpired(f"job {job_id}'s result expired (kept {self.settings.job_ttl_s:g}s)")
        meta = dict(record.result)
        key = meta.pop("key")
        meta.pop("cache", None)
        return JobResult(record, Upscaled(data=data, **meta), key)

    # --- the workers ------------------------------------------------------------------------------
    async def _worker(self, index: int) -> None:
        owner = f"{self.server_id}/{index}"  # one lease holder per worker: two never share a job
        while not self._stopping:
            try:
                record = await self._io(self.store.claim, owner, time.time(), self.settings.job_lease_s)
            except Exception as exc:  # noqa: BLE001 - the store is down: keep trying, do not die
                log.warning("job worker %d: claiming failed: %s: %s", index, type(exc).__name__, exc)
                record = None
            if record is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
                continue
            try:
                await self._run(record, owner)
            except Exception:  # noqa: BLE001 - the store failed while ending the job; it runs again later
                log.exception("job %s: the job store failed", record.id)

    async def _run(self, record: JobRecord, owner: str) -> None:
        started = time.monotonic()
        ticket = Ticket(deadline=float("inf"), priority=BACKGROUND)
        running = RunningJob(owner, ticket, asyncio.Event())
        if record.attempts > MAX_ATTEMPTS:
            await self._fail(record, running, "crashed", f"the server stopped {record.attempts - 1} times while running "
                             "this job; not retried")
            return
        log.info("job %s: attempt %d by %s", record.id, record.attempts, owner)
        self._running[record.id] = running
        progress = {"done": 0, "total": 0}
        labels = ["", ""]
        try:
            result, key, hit = await self._compute(record, running, progress, labels)
            meta = asdict(result)
            del meta["data"]
            meta.update(key=key, cache="hit" if hit else "miss")
            finished = await self._io(self.store.finish, record.id, owner, time.time(), result.data, meta,
                                      self.settings.job_ttl_s, progress["total"])
            if finished:
                self.metrics.job_finished(DONE, result.model, str(result.scale), time.monotonic() - started)
            elif (await self._io(self.store.get, record.id)).status == "cancelled":
                self.metrics.job_finished("cancelled", *labels, None)  # cancelled as its last tiles ran
        except (Cancelled, asyncio.CancelledError):  # cancelled by a client, or the server stops (stop())
            self.engine.scheduler.cancel(ticket)
            if self._stopping:
                await self._release(record, owner)
            else:
                self.metrics.job_finished("cancelled", *labels, None)
        except Exception as exc:  # noqa: BLE001 - user errors fail the job with 4xx details; bugs are logged
            self.engine.scheduler.cancel(ticket)
            if self._stopping:  # the scheduler stopped under it: the next server runs it
                await self._release(record, owner)
                return
            err = classify(exc)
            if err is None:
                log.exception("job %s failed", record.id)
                await self._fail(record, running, "internal", "internal server error (logged)", labels)
            else:
                await self._fail(record, running, err.code, err.detail, labels)
        finally:
            if self._running.get(record.id) is running:
                del self._running[record.id]

    async def _compute(self, record: JobRecord, running: RunningJob, progress: dict, labels: list
                       ) -> tuple[Upscaled, str, bool]:
        """The job's image from the result cache (``inference_ms`` 0) or the engine; (result, cache
        key, hit). ``progress`` and ``labels`` are filled in as the engine goes."""
        body = await self._io(self.store.read_input, record.id)
        if body is None:
            raise Cancelled()  # cancelled (input deleted) between the claim and now
        request = UpscaleRequest(body=body, **record.params)
        key = cache_key(body_digest(body), self.engine.result_identity(request))
        cached = self.cache.get(key)
        if self.cache.enabled:
            self.metrics.cache_lookups(cached is not None)
        if cached is not None:
            return replace(cached, inference_ms=0.0), key, True

        def on_progress(job) -> None:
            progress["done"], progress["total"] = job.tiles_done, job.tiles_total

        work = self.engine.upscale(running.ticket, request, on_model=lambda m: labels.__setitem__(0, m.name),
                                   on_job=lambda j: labels.__setitem__(1, str(j.size.scale)),
                                   on_progress=on_progress, max_pixels=self.settings.job_max_pixels)
        result = await self._with_heartbeat(record, running, work, progress)
        self.cache.put(key, result)
        return result, key, False

    async def _with_heartbeat(self, record: JobRecord, running: RunningJob, work, progress: dict) -> Upscaled:
        """Awaits ``work``, renewing the lease and recording progress; ``Cancelled`` when a client
        cancelled it here or the store says the job is no longer ours."""
        task = asyncio.ensure_future(work)
        cancelled = asyncio.ensure_future(running.cancelled.wait())
        interval = min(PROGRESS_INTERVAL_S, self.settings.job_lease_s / 3)
        try:
            while True:
                done, _ = await asyncio.wait({task, cancelled}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return task.result()
                if cancelled in done:
                    raise Cancelled()
                try:
                    ours = await self._io(self.store.heartbeat, record.id, running.owner, time.time(),
                                          self.settings.job_lease_s, progress["done"], progress["total"])
                except Exception as exc:  # noqa: BLE001 - a store hiccup: keep computing, renew next time
                    log.warning("job %s: heartbeat failed: %s: %s", record.id, type(exc).__name__, exc)
                    ours = True
                if not ours:
                    log.info("job %s was cancelled or taken over; dropping its tiles", record.id)
                    raise Cancelled()
        finally:
            cancelled.cancel()
            if not task.done():
                self.engine.scheduler.cancel(running.ticket)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _fail(self, record: JobRecord, running: RunningJob, code: str, detail: str, labels=("", "")) -> None:
        log.info("job %s failed: %s: %s", record.id, code, detail)
        if await self._io(self.store.fail, record.id, running.owner, time.time(), code, detail,
                          self.settings.job_ttl_s):
            self.metrics.job_finished("failed", *labels, None)

    async def _release(self, record: JobRecord, owner: str) -> None:
        try:
            await self._io(self.store.release, record.id, owner)
        except Exception:  # noqa: BLE001 - the lease expires and another server takes it anyway
            log.warning("job %s: could not release it; it resumes when its lease expires", record.id)

    async def _maintain(self) -> None:
        """Expiry sweep and the job gauges, every ``SWEEP_INTERVAL_S``."""
        while not self._stopping:
            try:
                await self._io(self.store.sweep, time.time(), self.settings.job_ttl_s)
                self.metrics.set_job_stats(await self._io(self.store.stats))
            except Exception:  # noqa: BLE001 - retried at the next interval
                log.exception("job store maintenance failed")
            await asyncio.sleep(SWEEP_INTERVAL_S)

