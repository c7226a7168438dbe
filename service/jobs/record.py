"""A job as every store keeps it: ``JobRecord``, its statuses and the store's own errors."""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, fields

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
TERMINAL = (DONE, FAILED, CANCELLED)
ID_BYTES = 18  # secrets.token_urlsafe(18): 144 random bits, 24 URL-safe characters


class StoreFull(Exception):
    """Inputs and results held have reached ``SR_JOBS_MAX_BYTES``."""


def new_job_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def key_hash(api_key: str | None) -> str:
    """What a job stores of the API key that created it (never the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


@dataclass
class JobRecord:
    id: str
    params: dict  # the UpscaleRequest fields besides the body
    created_at: float  # time.time()
    input_bytes: int
    key_hash: str = ""
    status: str = QUEUED
    owner: str = ""  # the worker holding the lease while running
    lease_until: float = 0.0
    attempts: int = 0  # claims so far (a server that died running it counts)
    started_at: float | None = None  # of the current attempt
    finished_at: float | None = None
    expires_at: float | None = None  # result (or error) kept until then; 410 after
    tiles_done: int = 0
    tiles_total: int = 0
    error: str | None = None
    detail: str | None = None
    result: dict | None = None  # media_type, model, backend, scale, width, height, input_pixels, inference_ms,
    result_bytes: int = 0       # cache ("hit"|"miss"), key (the result cache key)
    expired: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobRecord":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
