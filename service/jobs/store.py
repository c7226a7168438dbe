"""The job store interface and ``open_store`` (the embedded SQLite spool, or Redis).

A store keeps every job's record, input and result, the queue of jobs waiting to run and the
leases of the running ones, so that any server sharing it can read, cancel and finish any job:

* ``create`` is durable when it returns (the HTTP layer answers 202 after it).
* ``claim`` hands the next queued job, or a running one whose lease expired (its server died),
  to one worker; the worker renews the lease with ``heartbeat`` (which also records progress and
  tells it when the job was cancelled elsewhere) and ends it with ``finish``/``fail``, or gives it
  back with ``release`` when shutting down.
* Terminal jobs keep their result (or error) until ``expires_at``; ``sweep`` then deletes the
  result and keeps a tombstone (``expired``, HTTP 410) for another TTL.

Methods are synchronous (SQLite, redis-py); the job manager calls them on its own threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .record import JobRecord


class JobStore(Protocol):
    def create(self, record: JobRecord, body: bytes, max_bytes: int) -> None:
        """Stores input and record and queues the job; ``StoreFull`` past ``max_bytes``."""

    def get(self, job_id: str) -> JobRecord | None: ...

    def claim(self, owner: str, now: float, lease_s: float) -> JobRecord | None: ...

    def heartbeat(self, job_id: str, owner: str, now: float, lease_s: float, tiles_done: int,
                  tiles_total: int) -> bool:
        """Renews the lease and records progress; False when the job is no longer this worker's
        (cancelled, or its lease expired and another worker took it)."""

    def finish(self, job_id: str, owner: str, now: float, data: bytes, result: dict, ttl_s: float,
               tiles: int) -> bool:
        """Stores the result; ``tiles`` = the job's tile count (all done)."""

    def fail(self, job_id: str, owner: str, now: float, error: str, detail: str, ttl_s: float) -> bool: ...

    def release(self, job_id: str, owner: str) -> None: ...

    def cancel(self, job_id: str, now: float, ttl_s: float) -> JobRecord | None:
        """Cancels a queued or running job (a terminal one is left as it is); the record after."""

    def read_input(self, job_id: str) -> bytes | None: ...

    def read_result(self, job_id: str) -> bytes | None: ...

    def sweep(self, now: float, ttl_s: float) -> int:
        """Deletes the results of jobs past ``expires_at`` (tombstones stay another ``ttl_s``)."""

    def stats(self) -> dict:
        """{"statuses": {status: live jobs}, "queued": jobs waiting, "bytes": inputs + results held}."""

    def close(self) -> None: ...


def open_store(backend: str, jobs_dir: Path, prefix: str = "srserve:") -> JobStore:
    """``local`` -> the SQLite spool in ``jobs_dir``; ``redis://…`` / ``rediss://…`` -> Redis."""
    if backend.startswith(("redis://", "rediss://", "unix://")):
        from .store_redis import RedisJobStore

        return RedisJobStore(backend, prefix)
    from .store_sqlite import SqliteJobStore

    return SqliteJobStore(jobs_dir)
