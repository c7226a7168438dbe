"""Cross-request tile batching: queues per (model, scale, tile shape, precision), one scheduler
per device with a dedicated inference thread.

Every image of every request is cut into tiles (``pipeline.tiling``); each tile (each of its 8
transformed copies with self-ensemble) becomes a ``TileJob`` in the queue of its ``BatchKey``.
Tiles of any request with the same key stack into one backend call.

* **Batches**: the scheduler thread serves a queue when it holds ``max_batch`` tiles or its
  oldest tile has waited ``max_delay``; between ready queues it takes the one waiting longest
  since it was last served (round-robin across models and shapes).
* **Fairness**: inside a queue the tiles sit in one lane per request and a batch takes one tile
  per lane in turn, so a 500-tile image and a 1-tile image share every batch.
* **Priority**: a ticket is ``INTERACTIVE`` (``/upscale``) or ``BACKGROUND`` (a job). While any
  interactive tile is queued only interactive tiles are batched, so a job of thousands of tiles
  delays a synchronous request by at most the batch already running; job tiles run when no
  interactive tile waits.
* **Cancellation**: a cancelled or expired request's lanes are removed; tiles already in a
  running batch are computed and dropped.
* **Scatter**: outputs go to a single collector thread, which hands them to their job
  (``pipeline.job``: un-transform, ensemble mean, stitch — the code the CLI runs), while the
  inference thread already runs the next batch. The result of
  a request is therefore the same whatever it was batched with, up to float rounding of
  different batch sizes.
* **One-off calls** (DASR's per-image degradation vector, warm-up) run on the same thread,
  ahead of the queued tiles, so the device is only ever used by one thread.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import torch

from srserve.pipeline import ImageJob, OutOfMemory, WorkItem
from srserve.pipeline.job import BatchSplitter

from .metrics import Metrics

log = logging.getLogger("srserve.service")

_ticket_ids = itertools.count(1)

INTERACTIVE, BACKGROUND = 0, 1  # Ticket.priority: lower is served first


class Runner(Protocol):
    """What the scheduler needs of a served model."""

    name: str
    backend_name: str
    precision: str

    def run_tiles(self, windows: torch.Tensor, scales: list[int], degradation: torch.Tensor | None
                  ) -> list[torch.Tensor]: ...

    def queue_scale(self, scale: int) -> int | None: ...


class BatchKey(NamedTuple):
    model: str
    scale: int | None  # None: MDSR tiles of every scale share the body (see ServedModel)
    tile_shape: tuple[int, int]
    precision: str


@dataclass(eq=False)
class Ticket:
    """One HTTP request as the scheduler sees it."""

    deadline: float  # time.monotonic()
    priority: int = INTERACTIVE
    id: int = field(default_factory=lambda: next(_ticket_ids))
    cancelled: bool = False
    inference_s: float = 0.0  # this request's share of the backend time of its batches

    def dropped(self, now: float) -> bool:
        return self.cancelled or now > self.deadline


class ImageWork:
    """One request's ``ImageJob`` through one served model, as the scheduler runs it.

    Windows are cut out when their batch forms; outputs go back through ``ImageJob.add`` on the
    collector thread (the only thread touching the job's planes); the asyncio future gets the
    finished job (its ``compose`` runs on the I/O pool). ``on_progress`` (collector thread) is
    told after every tile output: the jobs API reports it.
    """

    def __init__(self, ticket: Ticket, model: Runner, job: ImageJob, loop: asyncio.AbstractEventLoop,
                 on_progress: Callable[[ImageJob], None] | None = None):
        self.ticket = ticket
        self.model = model
        self.job = job
        self.loop = loop
        self.on_progress = on_progress
        self.future: asyncio.Future = loop.create_future()

    @property
    def tile_jobs(self) -> int:
        return self.job.tiles_total

    def add(self, item: WorkItem, out: torch.Tensor) -> None:
        """One tile output (collector thread); completes the future after the last one."""
        if self.future_done:
            return
        self.job.add(item, out)
        if self.on_progress is not None:
            self.on_progress(self.job)
        if self.job.done:
            self.resolve(self.job)

    @property
    def future_done(self) -> bool:
        return self.future.done()

    def resolve(self, result) -> None:
        self._call_in_loop(_set_result, result)

    def fail(self, exc: BaseException) -> None:
        self._call_in_loop(_set_exception, exc)

    def _call_in_loop(self, fn, value) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, self.future, value)
        except RuntimeError:  # the event loop is closed: nobody waits for this request any more
            pass


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


@dataclass(eq=False)
class TileJob:
    work: ImageWork
    item: WorkItem
    enqueued: float

    @property
    def scale(self) -> int:
        return self.item.plane.scale

    @property
    def shape(self) -> tuple[int, int]:
        return self.item.shape


class TileQueue:
    """The tiles of one ``BatchKey``, one lane (deque) per request, served round-robin; lanes
    are kept per priority and a batch only takes tiles of the most urgent priority present."""

    def __init__(self, key: BatchKey, model: Runner):
        self.key = key
        self.model = model
        self.lanes: dict[int, OrderedDict[int, deque[TileJob]]] = {}  # priority -> ticket id -> lane
        self.sizes: dict[int, int] = {}
        self.last_served = 0.0

    @property
    def size(self) -> int:
        return sum(self.sizes.values())

    def push(self, ticket: Ticket, jobs: list[TileJob]) -> None:
        self.lanes.setdefault(ticket.priority, OrderedDict()).setdefault(ticket.id, deque()).extend(jobs)
        self.sizes[ticket.priority] = self.sizes.get(ticket.priority, 0) + len(jobs)

    def holds(self, priority: int) -> bool:
        return self.sizes.get(priority, 0) > 0

    @property
    def priority(self) -> int:
        """The most urgent priority with tiles waiting here."""
        return min(p for p, n in self.sizes.items() if n)

    def oldest(self, priority: int | None = None) -> float:
        """Enqueue time of the oldest waiting tile of ``priority`` (default: the most urgent)."""
        lanes = self.lanes[self.priority if priority is None else priority]
        return min(lane[0].enqueued for lane in lanes.values())

    def waiting_since(self) -> float:
        """Priority between queues: time since the queue was served or its oldest tile came."""
        return max(self.oldest(), self.last_served)

    def take(self, n: int, now: float) -> tuple[list[TileJob], list[TileJob]]:
        """Up to ``n`` live tiles of the most urgent priority, one per lane in turn; also
        returns the dropped ones."""
        priority = self.priority
        lanes = self.lanes[priority]
        batch: list[TileJob] = []
        dropped: list[TileJob] = []
        while len(batch) < n and lanes:
            ticket_id, lane = next(iter(lanes.items()))
            job = lane.popleft()
            self.sizes[priority] -= 1
            if lane:
                lanes.move_to_end(ticket_id)
            else:
                del lanes[ticket_id]
            (dropped if job.work.ticket.dropped(now) else batch).append(job)
        self.last_served = now
        return batch, dropped

    def remove(self, ticket: Ticket) -> list[TileJob]:
        lane = self.lanes.get(ticket.priority, {}).pop(ticket.id, None)
        if not lane:
            return []
        self.sizes[ticket.priority] -= len(lane)
        return list(lane)

    def all_jobs(self) -> list[TileJob]:
        return [job for lanes in self.lanes.values() for lane in lanes.values() for job in lane]


class Scheduler:
    """Forms batches from the queues of one device and runs them on one inference thread."""

    def __init__(self, device: torch.device, max_batch: int, max_delay_s: float, metrics: Metrics):
        self.device = device
        self.max_batch = max(1, int(max_batch))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.metrics = metrics
        self._cond = threading.Condition()
        self._queues: dict[BatchKey, TileQueue] = {}
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._queued = 0
        self._queued_by_priority: dict[int, int] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"sr-inference-{device}", daemon=True)
        self._collector = ThreadPoolExecutor(1, thread_name_prefix="sr-stitch")
        self.batches_run = 0
        self._splitters: dict[str, BatchSplitter] = {}

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops after the running batch; queued tiles and calls are dropped (the server has
        drained first, so only requests past the drain timeout lose their work)."""
        with self._cond:
            self._stopping = True
            dropped = [job for queue in self._queues.values() for job in queue.all_jobs()]
            calls = list(self._calls)
            self._queues.clear()
            self._calls.clear()
            self._queued = 0
            self._queued_by_priority.clear()
            self._cond.notify_all()
        self._count_dequeued(dropped)
        for _, future in calls:
            future.cancel()
        for work in {id(job.work): job.work for job in dropped}.values():
            work.fail(RuntimeError("the server stopped before this request finished"))
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._collector.shutdown(wait=True)

    # --- the event loop's side ----------------------------------------------------------------
    @property
    def queued_tiles(self) -> int:
        return self._queued

    def queued_tiles_of(self, priority: int) -> int:
        return self._queued_by_priority.get(priority, 0)

    def _count_queued(self, priority: int, n: int) -> None:
        """Lock held: ``n`` tiles of ``priority`` joined (n > 0) or left (n < 0) the queues."""
        self._queued += n
        self._queued_by_priority[priority] = self._queued_by_priority.get(priority, 0) + n

    def submit(self, work: ImageWork) -> None:
        """Queues every tile (and ensemble copy) of ``work``."""
        now = time.monotonic()
        by_key: dict[BatchKey, list[TileJob]] = {}
        for item in work.job.items():
            key = BatchKey(work.model.name, work.model.queue_scale(item.plane.scale), item.shape, work.model.precision)
            by_key.setdefault(key, []).append(TileJob(work, item, now))
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            for key, jobs in by_key.items():
                queue = self._queues.get(key)
                if queue is None:
                    queue = self._queues[key] = TileQueue(key, work.model)
                queue.push(work.ticket, jobs)
                self._count_queued(work.ticket.priority, len(jobs))
            self._cond.notify()
        self.metrics.queue_depth.labels(work.model.name, str(work.job.scale)).inc(work.tile_jobs)

    def cancel(self, ticket: Ticket) -> int:
        """Drops the queued tiles of a request; returns how many."""
        ticket.cancelled = True
        with self._cond:
            removed = [job for queue in self._queues.values() for job in queue.remove(ticket)]
            self._count_queued(ticket.priority, -len(removed))
            for key in [key for key, queue in self._queues.items() if not queue.size]:
                del self._queues[key]
        self._count_dequeued(removed)
        return len(removed)

    def call(self, fn: Callable[[], object]) -> Future:
        """Runs ``fn`` on the inference thread before any further batch."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    async def call_async(self, fn: Callable[[], object]):
        return await asyncio.wrap_future(self.call(fn))

    # --- the inference thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                item = self._next_item()
                if item is None:
                    return
            kind, payload = item
            if kind == "call":
                self._run_call(*payload)
            else:
                self._run_batch(*payload)

    def _next_item(self):
        """Waits (lock held) for a call or a ready batch; None when stopping with nothing left."""
        while True:
            if self._stopping:
                return None
            if self._calls:
                return "call", self._calls.popleft()
            now = time.monotonic()
            queue, wait = self._pick(now)
            if queue is not None:
                priority = queue.priority
                batch, dropped = queue.take(self.max_batch, now)
                self._count_queued(priority, -(len(batch) + len(dropped)))
                if not queue.size:
                    del self._queues[queue.key]
                self._count_dequeued(batch + dropped)
                if batch:
                    return "batch", (queue, batch, now)
                continue
            self._cond.wait(wait)

    def _pick(self, now: float) -> tuple[TileQueue | None, float | None]:
        """The ready queue waiting longest, else how long until the next one is due. While
        interactive tiles wait anywhere, only queues holding them count (module doc)."""
        best, best_since, next_due = None, None, None
        urgent = min((p for p, n in self._queued_by_priority.items() if n), default=INTERACTIVE)
        for queue in self._queues.values():
            if not queue.holds(urgent):
                continue
            oldest = queue.oldest(urgent)
            if queue.sizes[urgent] >= self.max_batch or now - oldest >= self.max_delay_s:
                since = queue.waiting_since()
                if best is None or since < best_since:
                    best, best_since = queue, since
            else:
                due = oldest + self.max_delay_s - now
                next_due = due if next_due is None else min(next_due, due)
        return best, (None if best is not None else next_due)

    def _count_dequeued(self, jobs: list[TileJob]) -> None:
        counts: dict[tuple[str, int], int] = {}
        for job in jobs:
            key = (job.work.model.name, job.scale)
            counts[key] = counts.get(key, 0) + 1
        for (name, scale), n in counts.items():
            self.metrics.queue_depth.labels(name, str(scale)).dec(n)

    def _run_call(self, fn: Callable[[], object], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            future.set_exception(exc)

    def _run_batch(self, queue: TileQueue, jobs: list[TileJob], started: float) -> None:
        model = queue.model
        scales = [job.scale for job in jobs]
        scale_label = str(scales[0]) if len(set(scales)) == 1 else "mixed"
        for job in jobs:
            self.metrics.queue_wait.labels(model.name, str(job.scale), model.backend_name).observe(
                started - job.enqueued)
        try:
            outputs = self._run_splitting(model, jobs)
        except Exception as exc:  # noqa: BLE001 - the requests fail, the server goes on
            if not isinstance(exc, OutOfMemory):
                log.exception("batch of %d tiles of %s failed", len(jobs), model.name)
            for work in {id(job.work): job.work for job in jobs}.values():
                work.fail(exc)
            return
        elapsed = time.monotonic() - started
        self.batches_run += 1
        self.metrics.inference.labels(model.name, scale_label, model.backend_name).observe(elapsed)
        self.metrics.batch_size.labels(model.name, model.backend_name).observe(len(jobs))
        for job in jobs:
            job.work.ticket.inference_s += elapsed / len(jobs)
        self._collector.submit(self._scatter, jobs, outputs)

    def _run_splitting(self, model: Runner, jobs: list[TileJob]) -> list[torch.Tensor]:
        """Runs a batch under the pipeline's out-of-memory policy (one splitter per model)."""
        splitter = self._splitters.get(model.name)
        if splitter is None:
            splitter = self._splitters[model.name] = BatchSplitter(self.device, model.name)
        return splitter.run(lambda chunk: self._run_tiles(model, chunk), jobs)

    def _run_tiles(self, model: Runner, jobs: list[TileJob]) -> list[torch.Tensor]:
        windows = torch.stack([job.item.window() for job in jobs])
        degradation = None
        if jobs[0].item.plane.degradation is not None:
            degradation = torch.cat([job.item.plane.degradation for job in jobs])
        return model.run_tiles(windows, [job.scale for job in jobs], degradation)

    def _scatter(self, jobs: list[TileJob], outputs: list[torch.Tensor]) -> None:
        """Collector thread: each output to its image."""
        for job, out in zip(jobs, outputs):
            work = job.work
            if work.ticket.cancelled or work.future_done:
                continue
            try:
                work.add(job.item, out)
            except Exception as exc:  # noqa: BLE001 - a stitching bug fails one request, not the thread
                log.exception("stitching a tile of %s failed", work.model.name)
                work.fail(exc)
