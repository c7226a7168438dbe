"""The scheduler on its own, with a recording runner: batch formation (size and delay), fair
round-robin across requests and queues, cancellation, self-ensemble assembly, out-of-memory
splitting. The runner upscales by pixel repetition, so every expected output is exact."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from srserve.pipeline import ImageJob, OutOfMemory, Plane
from srserve.pipeline.ensemble import ENSEMBLE_TRANSFORMS, IDENTITY
from srserve.pipeline.tiling import plan_tiles
from srserve.service.batching import BACKGROUND, INTERACTIVE, ImageWork, Scheduler, Ticket
from srserve.service.metrics import Metrics


class RecordingRunner:
    """Nearest-neighbour x``scale``; records every batch as (ticket ids, scales)."""

    backend_name = "fake"
    precision = "fp32"

    def __init__(self, name: str = "fake", delay: float = 0.0, oom_above: int | None = None,
                 hold_first: bool = False):
        self.name = name
        self.delay = delay
        self.oom_above = oom_above
        self.batches: list[list[int]] = []
        self.current: list = []
        self.lock = threading.Lock()
        # hold_first: the first batch waits for ``release`` after setting ``started``, so a test
        # can act while a batch is known to be running (events, not sleeps)
        self.started, self.release = threading.Event(), threading.Event()
        if not hold_first:
            self.release.set()

    def queue_scale(self, scale: int) -> int:
        return scale

    def run_tiles(self, windows, scales, degradation):
        if self.oom_above is not None and len(windows) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.started.set()
        self.release.wait(60)
        time.sleep(self.delay)
        with self.lock:
            self.batches.append(list(self.current))
        s = scales[0]
        return list(windows.repeat_interleave(s, -1).repeat_interleave(s, -2))


class TaggingScheduler(Scheduler):
    """Lets the runner know which requests a batch holds."""

    def _run_tiles(self, model, jobs):
        model.current = [job.work.ticket.id for job in jobs]
        return super()._run_tiles(model, jobs)


def make_work(runner, loop, h: int, w: int, tile: int, *, ensemble: bool = False, seed: int = 0,
              scale: int = 2, priority: int = INTERACTIVE) -> ImageWork:
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    plane = Plane(x, plan_tiles(h, w, scale, tile, 2), ENSEMBLE_TRANSFORMS if ensemble else IDENTITY)
    job = ImageJob(raster=None, size=None, planes=[plane], alpha="model")
    work = ImageWork(Ticket(deadline=time.monotonic() + 60, priority=priority), runner, job, loop)
    work.x, work.plan = x, plane.plan
    return work


async def result(work: ImageWork) -> torch.Tensor:
    """The finished image of a single-plane job."""
    return (await work.future).planes[0].result()


def nearest(x: torch.Tensor, s: int) -> torch.Tensor:
    return x.repeat_interleave(s, -1).repeat_interleave(s, -2)


async def until(condition, timeout_s: float = 30.0) -> None:
    """Polls ``condition()`` from the event loop (the scheduler runs on its own thread)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def started(runner) -> None:
    await asyncio.get_running_loop().run_in_executor(None, runner.started.wait, 60)


def run_scheduler(scenario, *, max_batch: int, max_delay_s: float = 0.0):
    async def main():
        scheduler = TaggingScheduler(torch.device("cpu"), max_batch, max_delay_s, Metrics())
        scheduler.start()
        try:
            return await scenario(scheduler, asyncio.get_running_loop())
        finally:
            scheduler.stop()

    return asyncio.run(main())


def test_tiles_of_many_requests_share_batches_and_results_are_exact():
    runner = RecordingRunner()

    async def scenario(scheduler, loop):
        works = [make_work(runner, loop, 20, 20, 8, seed=i) for i in range(3)]  # 9 tiles each, 12x12 windows
        for work in works:
            scheduler.submit(work)
        return works, await asyncio.gather(*(result(w) for w in works))

    works, results = run_scheduler(scenario, max_batch=6, max_delay_s=0.05)
    for work, out in zip(works, results):
        assert torch.equal(out, nearest(work.x, 2).clamp(0, 1))
    assert sum(map(len, runner.batches)) == 27
    assert max(len(set(b)) for b in runner.batches) == 3  # one batch holds tiles of all three requests
    assert len(runner.batches) <= 6  # 27 tiles in batches of up to 6


def test_round_robin_a_small_request_is_not_starved():
    runner = RecordingRunner(hold_first=True)

    async def scenario(scheduler, loop):
        big = make_work(runner, loop, 64, 64, 8, seed=1)  # 64 tiles
        scheduler.submit(big)
        await started(runner)  # the big request's first batch is running
        small = make_work(runner, loop, 12, 12, 8, seed=2)  # 4 tiles of the same 12x12 window shape
        scheduler.submit(small)
        runner.release.set()
        await small.future
        done_small = len(runner.batches)
        await big.future
        return big, small, done_small, len(runner.batches)

    big, small, done_small, total = run_scheduler(scenario, max_batch=2)
    assert done_small < total / 2  # served within the first batches after it came, not after the 64 tiles
    shared = [b for b in runner.batches if set(b) == {big.ticket.id, small.ticket.id}]
    assert len(shared) == 4  # each of its tiles rode along with one of the big request's


def test_round_robin_across_queues():
    """Two models (two queues): a request of the second is served while the first still has work."""
    slow, other = RecordingRunner("slow", hold_first=True), RecordingRunner("other")

    async def scenario(scheduler, loop):
        big = make_work(slow, loop, 64, 64, 8)
        scheduler.submit(big)
        await started(slow)
        small = make_work(other, loop, 8, 8, 8)
        scheduler.submit(small)
        slow.release.set()
        await small.future
        return big.future.done(), len(slow.batches)

    big_done, slow_batches = run_scheduler(scenario, max_batch=1)
    assert not big_done and slow_batches < 40


def test_interactive_requests_go_ahead_of_a_big_job():
    """A job of 64 tiles is running when two synchronous requests come (one in the job's queue,
    one in another model's): after the job's batch already running, every batch holds only the
    requests' tiles until both are done; then the job resumes and finishes exactly."""
    shared, other = RecordingRunner("shared", hold_first=True), RecordingRunner("other")
    order: list[str] = []  # which kind each batch was, in the order they ran (both runners)

    class OrderingScheduler(TaggingScheduler):
        def _run_tiles(self, model, jobs):
            kinds = {job.work.ticket.priority for job in jobs}
            order.append("job" if kinds == {BACKGROUND} else "sync" if kinds == {INTERACTIVE} else "mixed")
            return super()._run_tiles(model, jobs)

    async def scenario(scheduler, loop):
        job = make_work(shared, loop, 64, 64, 8, seed=1, priority=BACKGROUND)  # 64 tiles of 12x12
        scheduler.submit(job)
        await started(shared)  # the job's first batch (2 tiles) is running
        same_queue = make_work(shared, loop, 24, 24, 8, seed=2)  # 9 tiles, the job's window shape
        other_queue = make_work(other, loop, 20, 20, 10, seed=3)  # 4 tiles, another model
        scheduler.submit(same_queue)
        scheduler.submit(other_queue)
        assert scheduler.queued_tiles_of(INTERACTIVE) == 13 and scheduler.queued_tiles_of(BACKGROUND) == 62
        shared.release.set()
        await asyncio.gather(same_queue.future, other_queue.future, job.future)
        return job, same_queue, other_queue

    scheduler = OrderingScheduler(torch.device("cpu"), 2, 0.0, Metrics())
    scheduler.start()
    try:
        job, same_queue, other_queue = asyncio.run(_with_loop(scenario, scheduler))
    finally:
        scheduler.stop()
    sync_batches = 5 + 2  # 9 tiles and 4 tiles in batches of 2
    assert order[0] == "job"
    assert order[1:1 + sync_batches] == ["sync"] * sync_batches
    assert order[1 + sync_batches:] == ["job"] * 31 and "mixed" not in order
    for work in (job, same_queue, other_queue):
        assert torch.equal(work.future.result().planes[0].result(), nearest(work.x, 2).clamp(0, 1))


async def _with_loop(scenario, scheduler):
    return await scenario(scheduler, asyncio.get_running_loop())


def test_max_delay_waits_for_companions_then_runs_partial_batches():
    runner = RecordingRunner()

    async def scenario(scheduler, loop):
        first = make_work(runner, loop, 8, 8, 8, seed=1)
        second = make_work(runner, loop, 8, 8, 8, seed=2)
        scheduler.submit(first)
        scheduler.submit(second)  # well within max_delay: the first tile waits for it
        await asyncio.gather(first.future, second.future)
        lone = make_work(runner, loop, 8, 8, 8, seed=3)
        t0 = time.monotonic()
        scheduler.submit(lone)
        await lone.future  # a lone tile runs once max_delay has passed, not never
        return {first.ticket.id, second.ticket.id}, time.monotonic() - t0

    pair, lone_latency = run_scheduler(scenario, max_batch=4, max_delay_s=1.0)
    assert set(runner.batches[0]) == pair and len(runner.batches[0]) == 2  # the first waited and was batched
    assert lone_latency >= 1.0  # and not before: the scheduler waited for companions


def test_self_ensemble_copies_are_inverted_and_averaged():
    runner = RecordingRunner()

    async def scenario(scheduler, loop):
        work = make_work(runner, loop, 11, 17, 6, ensemble=True)  # non-square windows: transposed copies
        scheduler.submit(work)
        return work, await result(work)

    work, out = run_scheduler(scenario, max_batch=8)
    assert sum(map(len, runner.batches)) == len(work.plan.tiles) * 8
    assert torch.allclose(out, nearest(work.x, 2).clamp(0, 1), atol=1e-6)


def test_cancel_drops_queued_tiles():
    runner = RecordingRunner(hold_first=True)

    async def scenario(scheduler, loop):
        big = make_work(runner, loop, 64, 64, 8)
        scheduler.submit(big)
        await started(runner)  # one tile is running, 63 are queued
        dropped = scheduler.cancel(big.ticket)
        queued = scheduler.queued_tiles
        runner.release.set()
        await until(lambda: len(runner.batches) == 1)
        await scheduler.call_async(lambda: None)  # the inference thread is past the running batch
        return dropped, queued, len(runner.batches), big.future.done()

    dropped, queued, ran, done = run_scheduler(scenario, max_batch=1)
    assert dropped == 63 and queued == 0
    assert ran == 1  # only the batch already running
    assert not done


def test_out_of_memory_halves_the_batch_then_fails_one_tile():
    async def scenario(scheduler, loop):
        ok_runner = RecordingRunner(oom_above=2)
        work = make_work(ok_runner, loop, 32, 32, 8)  # 16 tiles in batches of 8 -> 4 -> 2
        scheduler.submit(work)
        out = await result(work)
        bad = make_work(RecordingRunner(oom_above=0), loop, 8, 8, 8)
        scheduler.submit(bad)
        with pytest.raises(OutOfMemory):
            await bad.future
        return work, out, ok_runner

    work, out, runner = run_scheduler(scenario, max_batch=8)
    assert torch.equal(out, nearest(work.x, 2).clamp(0, 1))
    assert max(map(len, runner.batches)) == 2


def test_deadline_passed_tiles_are_not_run():
    runner = RecordingRunner()

    async def scenario(scheduler, loop):
        work = make_work(runner, loop, 16, 16, 8)
        work.ticket.deadline = time.monotonic() - 1
        scheduler.submit(work)
        await until(lambda: scheduler.queued_tiles == 0)
        await scheduler.call_async(lambda: None)  # the inference thread has looked at the queues since
        return scheduler.queued_tiles, work.future.done()

    queued, done = run_scheduler(scenario, max_batch=2)
    assert queued == 0 and runner.batches == [] and not done


def test_stop_drops_queued_work_and_fails_its_requests():
    runner = RecordingRunner(hold_first=True)

    async def main():
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(torch.device("cpu"), 1, 0.0, Metrics())
        scheduler.start()
        work = make_work(runner, loop, 64, 64, 8)  # 64 tiles
        scheduler.submit(work)
        await started(runner)
        stopping = loop.run_in_executor(None, scheduler.stop)
        await until(lambda: scheduler.queued_tiles == 0)  # stop dropped the queue before joining the thread
        runner.release.set()
        await stopping
        with pytest.raises(RuntimeError, match="stopped"):
            await work.future
        return scheduler.queued_tiles

    assert asyncio.run(main()) == 0
    assert len(runner.batches) == 1  # the batch running when it stopped, not the 64
