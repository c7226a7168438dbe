"""The shared job store: job state, leases, the work queue, inputs and results in Redis.

Every server of a deployment points ``SR_JOBS_BACKEND`` at the same Redis; any of them reads,
cancels and finishes any job, and a server that dies leaves its jobs to the others once their
leases expire (``SR_JOB_LEASE_S``). Keys (``PREFIX`` = ``srserve:``):

    PREFIX job:ID          the record (JSON)
    PREFIX input:ID        the request body (deleted when the job ends)
    PREFIX result:ID       the encoded result (deleted at expiry)
    PREFIX queue           list of queued ids (LPUSH, RPOP: first in, first out)
    PREFIX leases          sorted set: running id -> lease end (unix time)
    PREFIX expiry          sorted set: ended id -> when its result expires
    PREFIX status:S        set of the live ids in status S (for the metrics)
    PREFIX bytes           inputs + results held (``SR_JOBS_MAX_BYTES``)

Each state change is one Lua script, so it is atomic across servers. The scripts name keys
built from the prefix, which a single Redis (or a Sentinel-managed primary) allows; Redis
Cluster is not supported. Durability of accepted jobs is Redis's: run it with ``appendonly
yes`` (docker-compose.yml and docker/k8s/redis.yaml do).
"""
from __future__ import annotations

import json
import math

from srserve.models.errors import SRError

from ..config import masked
from .record import QUEUED, STATUSES, JobRecord, StoreFull

_END = """
local function end_job(P, id, r, status, now, expires_at)
    redis.call('SREM', P .. 'status:' .. r.status, id)
    redis.call('SADD', P .. 'status:' .. status, id)
    r.status = status
    r.owner = ''
    r.lease_until = 0
    r.finished_at = now
    r.expires_at = expires_at
    redis.call('ZREM', P .. 'leases', id)
    redis.call('ZADD', P .. 'expiry', expires_at, id)
    if redis.call('DEL', P .. 'input:' .. id) == 1 then
        redis.call('DECRBY', P .. 'bytes', r.input_bytes)
    end
    redis.call('SET', P .. 'job:' .. id, cjson.encode(r))
end
local function owned(P, id, owner)
    local doc = redis.call('GET', P .. 'job:' .. id)
    if not doc then return nil end
    local r = cjson.decode(doc)
    if r.status ~= 'running' or r.owner ~= owner then return nil end
    return r
end
"""

CREATE = """
local P, id, doc, body, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local used = tonumber(redis.call('GET', P .. 'bytes') or '0')
if max > 0 and used + string.len(body) > max then return used end
redis.call('SET', P .. 'input:' .. id, body)
redis.call('SET', P .. 'job:' .. id, doc)
redis.call('INCRBY', P .. 'bytes', string.len(body))
redis.call('SADD', P .. 'status:queued', id)
redis.call('LPUSH', P .. 'queue', id)
return -1
"""

CLAIM = """
local P, owner, now, lease_until = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local id, r
local stale = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, 1)
if #stale > 0 then
    id = stale[1]
    local doc = redis.call('GET', P .. 'job:' .. id)
    if not doc then redis.call('ZREM', P .. 'leases', id) return false end
    r = cjson.decode(doc)
    if r.status ~= 'running' then redis.call('ZREM', P .. 'leases', id) return false end
else
    while true do
        id = redis.call('RPOP', P .. 'queue')
        if not id then return false end
        local doc = redis.call('GET', P .. 'job:' .. id)
        if doc then
            r = cjson.decode(doc)
            if r.status == 'queued' then break end
        end
    end
end
redis.call('SREM', P .. 'status:' .. r.status, id)
redis.call('SADD', P .. 'status:running', id)
r.status = 'running'
r.owner = owner
r.lease_until = lease_until
r.started_at = now
r.tiles_done = 0
r.attempts = r.attempts + 1
redis.call('ZADD', P .. 'leases', lease_until, id)
local doc = cjson.encode(r)
redis.call('SET', P .. 'job:' .. id, doc)
return doc
"""

HEARTBEAT = _END + """
local P, id, owner = ARGV[1], ARGV[2], ARGV[3]
local r = owned(P, id, owner)
if not r then return 0 end
r.lease_until = tonumber(ARGV[4])
r.tiles_done = tonumber(ARGV[5])
r.tiles_total = tonumber(ARGV[6])
redis.call('ZADD', P .. 'leases', r.lease_until, id)
redis.call('SET', P .. 'job:' .. id, cjson.encode(r))
return 1
"""

END = _END + """
local P, id, owner, now, expires_at, status = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local r = owned(P, id, owner)
if not r then return 0 end
for k, v in pairs(cjson.decode(ARGV[7])) do r[k] = v end
if ARGV[8] then
    redis.call('SET', P .. 'result:' .. id, ARGV[8])
    r.result_bytes = string.len(ARGV[8])
    redis.call('INCRBY', P .. 'bytes', r.result_bytes)
end
end_job(P, id, r, status, now, expires_at)
return 1
"""

CANCEL = _END + """
local P, id, now, expires_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local doc = redis.call('GET', P .. 'job:' .. id)
if not doc then return false end
local r = cjson.decode(doc)
if r.status == 'queued' or r.status == 'running' then
    end_job(P, id, r, 'cancelled', now, expires_at)
    return redis.call('GET', P .. 'job:' .. id)
end
return doc
"""

RELEASE = _END + """
local P, id, owner = ARGV[1], ARGV[2], ARGV[3]
local r = owned(P, id, owner)
if not r then return 0 end
redis.call('SREM', P .. 'status:running', id)
redis.call('SADD', P .. 'status:queued', id)
r.status = 'queued'
r.owner = ''
r.lease_until = 0
r.tiles_done = 0
redis.call('ZREM', P .. 'leases', id)
redis.call('SET', P .. 'job:' .. id, cjson.encode(r))
redis.call('RPUSH', P .. 'queue', id)
return 1
"""

SWEEP = """
local P, now, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', now)
for _, id in ipairs(ids) do
    redis.call('ZREM', P .. 'expiry', id)
    local doc = redis.call('GET', P .. 'job:' .. id)
    if doc then
        local r = cjson.decode(doc)
        if redis.call('DEL', P .. 'result:' .. id) == 1 then
            redis.call('DECRBY', P .. 'bytes', r.result_bytes)
        end
        redis.call('SREM', P .. 'status:' .. r.status, id)
        r.expired = true
        redis.call('SET', P .. 'job:' .. id, cjson.encode(r), 'EX', keep)
    end
end
return #ids
"""


class RedisJobStore:
    def __init__(self, url: str, prefix: str = "srserve:"):
        import redis

        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10,
                                           health_check_interval=30)
        self.url = url
        self._scripts = {name: self.client.register_script(text) for name, text in
                         (("create", CREATE), ("claim", CLAIM), ("heartbeat", HEARTBEAT), ("end", END),
                          ("cancel", CANCEL), ("release", RELEASE), ("sweep", SWEEP))}
        try:
            self.client.ping()  # a wrong URL fails at startup, not at the first job
        except redis.RedisError as exc:
            raise SRError(f"cannot reach the jobs backend {masked(url)}: {exc}") from None

    def _run(self, name: str, *args):
        return self._scripts[name](args=[self.prefix, *args])

    def create(self, record: JobRecord, body: bytes, max_bytes: int) -> None:
        used = self._run("create", record.id, record.to_json(), body, int(max_bytes))
        if int(used) >= 0:
            raise StoreFull(f"{int(used)} bytes of jobs held (limit {max_bytes})")

    def get(self, job_id: str) -> JobRecord | None:
        doc = self.client.get(f"{self.prefix}job:{job_id}")
        return JobRecord.from_json(doc) if doc else None

    def claim(self, owner: str, now: float, lease_s: float) -> JobRecord | None:
        doc = self._run("claim", owner, repr(now), repr(now + lease_s))
        return JobRecord.from_json(doc) if doc else None

    def heartbeat(self, job_id, owner, now, lease_s, tiles_done, tiles_total) -> bool:
        return bool(self._run("heartbeat", job_id, owner, repr(now + lease_s), int(tiles_done), int(tiles_total)))

    def finish(self, job_id, owner, now, data, result, ttl_s, tiles) -> bool:
        patch = {"result": result, "tiles_done": tiles, "tiles_total": tiles}
        return bool(self._run("end", job_id, owner, repr(now), repr(now + ttl_s), "done", _patch(patch), data))

    def fail(self, job_id, owner, now, error, detail, ttl_s) -> bool:
        patch = {"error": error, "detail": detail}
        return bool(self._run("end", job_id, owner, repr(now), repr(now + ttl_s), "failed", _patch(patch)))

    def release(self, job_id, owner) -> None:
        self._run("release", job_id, owner)

    def cancel(self, job_id, now, ttl_s) -> JobRecord | None:
        doc = self._run("cancel", job_id, repr(now), repr(now + ttl_s))
        return JobRecord.from_json(doc) if doc else None

    def read_input(self, job_id) -> bytes | None:
        return self.client.get(f"{self.prefix}input:{job_id}")

    def read_result(self, job_id) -> bytes | None:
        return self.client.get(f"{self.prefix}result:{job_id}")

    def sweep(self, now, ttl_s) -> int:
        return int(self._run("sweep", repr(now), max(1, math.ceil(ttl_s))))

    def stats(self) -> dict:
        pipe = self.client.pipeline(transaction=False)
        for status in STATUSES:
            pipe.scard(f"{self.prefix}status:{status}")
        pipe.get(f"{self.prefix}bytes")
        *counts, held = pipe.execute()
        statuses = dict(zip(STATUSES, map(int, counts)))
        return {"statuses": statuses, "queued": statuses[QUEUED], "bytes": int(held or 0)}

    def close(self) -> None:
        self.client.close()


def _patch(values: dict) -> str:
    return json.dumps(values, separators=(",", ":"))
