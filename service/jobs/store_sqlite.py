"""The embedded job store: a spool directory on local disk with an SQLite database.

    SR_JOBS_DIR/jobs.sqlite3      one row per job (the record as JSON plus the columns queried)
    SR_JOBS_DIR/inputs/ID         the request body, written atomically before the row
    SR_JOBS_DIR/results/ID        the encoded result
    SR_JOBS_DIR/lock              held (flock) by the one server using this spool

One server per spool: the lock refuses a second one (replicas share jobs through Redis). Since
the lock holder is the only worker, jobs found "running" when the store opens belonged to a
server that died (SIGKILL, power loss): they go back to the queue at once. Files are written to
a temporary name, fsynced and renamed, and the row is committed after, so a row always has its
input; inputs without a row (a crash between the two) are removed when the store opens.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from srserve.models.errors import SRError

from .record import CANCELLED, DONE, FAILED, QUEUED, RUNNING, TERMINAL, JobRecord, StoreFull

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    expires_at REAL,
    expired INTEGER NOT NULL DEFAULT 0,
    held_bytes INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expired, expires_at);
"""


class SpoolInUse(SRError):
    """Another server holds this spool directory."""


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` completely or not at all, on disk when this returns."""
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteJobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.inputs = self.root / "inputs"
        self.results = self.root / "results"
        for folder in (self.root, self.inputs, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_lock()
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._recover()

    def _take_lock(self):
        handle = open(self.root / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise SpoolInUse(f"jobs directory {self.root} is used by another server (pid {owner}); give each "
                             "server its own SR_JOBS_DIR, or share jobs with SR_JOBS_BACKEND=redis://…") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def _recover(self) -> None:
        """Requeues the jobs of a server that died; removes inputs that never got a row."""
        with self._lock:
            rows = self.db.execute("SELECT doc FROM jobs WHERE status = ?", (RUNNING,)).fetchall()
            for (doc,) in rows:
                record = JobRecord.from_json(doc)
                record.status, record.owner, record.lease_until, record.tiles_done = QUEUED, "", 0.0, 0
                self._save(record)
            known = {row[0] for row in self.db.execute("SELECT id FROM jobs")}
        for folder in (self.inputs, self.results):
            for path in folder.iterdir():
                if path.name.removeprefix(".").removesuffix(".part") not in known:
                    path.unlink(missing_ok=True)

    # --- rows -----------------------------------------------------------------------------------
    def _save(self, record: JobRecord) -> None:
        held = (record.input_bytes if not record.terminal else 0) + (record.result_bytes if not record.expired else 0)
        self.db.execute("UPDATE jobs SET status = ?, expires_at = ?, expired = ?, held_bytes = ?, doc = ? WHERE id = ?",
                        (record.status, record.expires_at, int(record.expired), held, record.to_json(), record.id))

    def _load(self, job_id: str) -> JobRecord | None:
        row = self.db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_json(row[0]) if row else None

    def _held_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(held_bytes), 0) FROM jobs").fetchone()[0])

    # --- the interface ----------------------------------------------------------------------------
    def create(self, record: JobRecord, body: bytes, max_bytes: int) -> None:
        with self._lock:
            if max_bytes and self._held_bytes() + len(body) > max_bytes:
                raise StoreFull(f"{self._held_bytes()} bytes of jobs held (limit {max_bytes})")
            write_atomically(self.inputs / record.id, body)
            self.db.execute("INSERT INTO jobs (id, seq, status, held_bytes, doc) VALUES "
                            "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, ?, ?)",
                            (record.id, record.status, len(body), record.to_json()))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._load(job_id)

    def claim(self, owner: str, now: float, lease_s: float) -> JobRecord | None:
        with self._lock:
            row = self.db.execute("SELECT doc FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            record = JobRecord.from_json(row[0])
            record.status, record.owner, record.lease_until = RUNNING, owner, now + lease_s
            record.started_at, record.tiles_done, record.attempts = now, 0, record.attempts + 1
            self._save(record)
            return record

    def _owned(self, job_id: str, owner: str) -> JobRecord | None:
        record = self._load(job_id)
        if record is None or record.status != RUNNING or record.owner != owner:
            return None
        return record

    def heartbeat(self, job_id, owner, now, lease_s, tiles_done, tiles_total) -> bool:
        with self._lock:
            record = self._owned(job_id, owner)
            if record is None:
                return False
            record.lease_until, record.tiles_done, record.tiles_total = now + lease_s, tiles_done, tiles_total
            self._save(record)
            return True

    def finish(self, job_id, owner, now, data, result, ttl_s, tiles) -> bool:
        with self._lock:
            record = self._owned(job_id, owner)
            if record is None:
                return False
            write_atomically(self.results / job_id, data)
            record.result, record.result_bytes = result, len(data)
            record.tiles_done = record.tiles_total = tiles
            self._end(record, DONE, now, ttl_s)
            return True

    def fail(self, job_id, owner, now, error, detail, ttl_s) -> bool:
        with self._lock:
            record = self._owned(job_id, owner)
            if record is None:
                return False
            record.error, record.detail = error, detail
            self._end(record, FAILED, now, ttl_s)
            return True

    def _end(self, record: JobRecord, status: str, now: float, ttl_s: float) -> None:
        record.status, record.owner, record.lease_until = status, "", 0.0
        record.finished_at, record.expires_at = now, now + ttl_s
        self._save(record)
        (self.inputs / record.id).unlink(missing_ok=True)

    def release(self, job_id, owner) -> None:
        with self._lock:
            record = self._owned(job_id, owner)
            if record is not None:
                record.status, record.owner, record.lease_until, record.tiles_done = QUEUED, "", 0.0, 0
                self._save(record)

    def cancel(self, job_id, now, ttl_s) -> JobRecord | None:
        with self._lock:
            record = self._load(job_id)
            if record is not None and not record.terminal:
                self._end(record, CANCELLED, now, ttl_s)
            return record

    def read_input(self, job_id) -> bytes | None:
        return _read(self.inputs / job_id)

    def read_result(self, job_id) -> bytes | None:
        return _read(self.results / job_id)

    def sweep(self, now, ttl_s) -> int:
        with self._lock:
            rows = self.db.execute("SELECT doc FROM jobs WHERE expired = 0 AND expires_at <= ?", (now,)).fetchall()
            for (doc,) in rows:
                record = JobRecord.from_json(doc)
                record.expired = True
                self._save(record)
                (self.results / record.id).unlink(missing_ok=True)
            self.db.execute("DELETE FROM jobs WHERE expired = 1 AND expires_at <= ?", (now - ttl_s,))
            return len(rows)

    def stats(self) -> dict:
        with self._lock:
            counts = dict(self.db.execute("SELECT status, COUNT(*) FROM jobs WHERE expired = 0 GROUP BY status"))
            held = self._held_bytes()
        statuses = {s: int(counts.get(s, 0)) for s in (QUEUED, RUNNING, *TERMINAL)}
        return {"statuses": statuses, "queued": statuses[QUEUED], "bytes": held}

    def close(self) -> None:
        with self._lock:
            self.db.close()
        self._lock_file.close()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # the job ended (input) or expired (result) meanwhile
        return None
