"""The jobs API and the result cache in-process (httpx over ASGI, tiny random-weight models): a
job's lifecycle and result (= /upscale), cancellation while its tiles are queued, errors at
creation and while running, expiry (410), the disk bound (503), API-key isolation, the store's
recovery of a dead server's jobs, and cache hits without inference. The inference thread is
held with a blocking call on it (``hold``) wherever a test needs a job to stay queued."""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

import pytest

from service_fixtures import image_bytes, make_repository, max_diff, metric, running_app, service_settings
from srserve.service.batching import BACKGROUND
from srserve.service.jobs.record import JobRecord
from srserve.service.jobs.store_sqlite import SpoolInUse, SqliteJobStore

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("jobs") / "repo")


def settings(repo, tmp_path, **overrides):
    return service_settings(repo, models=["edsr", "mdsr"], jobs_dir=tmp_path / "jobs", **overrides)


async def wait_status(client, job_id: str, statuses=("done", "failed", "cancelled"), headers=None,
                      timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        view = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
        if view["status"] in statuses:
            return view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.02)


@asynccontextmanager
async def hold(app):
    """Keeps the inference thread busy (a call that waits for an event) so no batch runs."""
    release = threading.Event()
    blocked = app.state.service.engine.scheduler.call(lambda: release.wait(60))
    try:
        yield
    finally:
        release.set()
        await asyncio.wrap_future(blocked)


def test_job_lifecycle_result_equals_upscale(repo, tmp_path):
    async def scenario():
        async with running_app(settings(repo, tmp_path)) as (app, client):
            body = image_bytes(60, 52, seed=4)
            created = await client.post("/v1/jobs?model=mdsr&scale=3", content=body, headers=PNG)
            assert created.status_code == 202, created.text
            job = created.json()
            assert job["status"] == "queued" and len(job["id"]) >= 24
            assert created.headers["location"] == job["links"]["self"] == f"/v1/jobs/{job['id']}"
            view = await wait_status(client, job["id"])
            result = await client.get(job["links"]["result"])
            sync = await client.post("/upscale?model=mdsr&scale=3", content=body, headers=PNG)
            multipart = await client.post("/v1/jobs?model=mdsr&scale=3", files={"image": ("a.png", body, "image/png")})
            second = await wait_status(client, multipart.json()["id"])
            return view, result, sync, second

    view, result, sync, second = asyncio.run(scenario())
    assert view["status"] == "done" and view["progress"] == 1.0 and view["eta_s"] is None
    assert view["tiles_done"] == view["tiles_total"] > 1  # 16-pixel tiles
    assert view["created_at"] <= view["started_at"] <= view["finished_at"] < view["expires_at"]
    assert view["result"]["width"] == 52 * 3 and view["result"]["height"] == 60 * 3
    assert (view["result"]["backend"], view["result"]["precision"]) == ("torch", "fp32")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert result.headers["x-output-size"] == "156x180" and result.headers["x-model"] == "mdsr"
    assert max_diff(result.content, sync.content) <= 1
    assert second["status"] == "done"


def test_cancel_removes_queued_tiles_and_result_is_404_before_done(repo, tmp_path):
    async def scenario():
        async with running_app(settings(repo, tmp_path)) as (app, client):
            scheduler = app.state.service.engine.scheduler
            async with hold(app):
                job = (await client.post("/v1/jobs?model=edsr&scale=2", content=image_bytes(64, 64),
                                         headers=PNG)).json()
                await wait_status(client, job["id"], ("running",))
                deadline = time.monotonic() + 30
                while scheduler.queued_tiles_of(BACKGROUND) == 0:  # decoded and queued behind the hold
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                queued = scheduler.queued_tiles_of(BACKGROUND)
                early = await client.get(job["links"]["result"])
                cancelled = await client.delete(job["links"]["self"])
                left = scheduler.queued_tiles_of(BACKGROUND)
            after = await client.get(job["links"]["self"])
            result = await client.get(job["links"]["result"])
            deadline = time.monotonic() + 30
            while metric(metrics := (await client.get("/metrics")).text, "sr_jobs_finished_total",
                         status="cancelled") < 1:  # the worker has noticed
                assert time.monotonic() < deadline, "the worker never ended the cancelled job"
                await asyncio.sleep(0.02)
            return queued, early, cancelled, left, after.json(), result, metrics

    queued, early, cancelled, left, after, result, metrics = asyncio.run(scenario())
    assert queued == 16  # 64x64 in 16-pixel tiles
    assert early.status_code == 404 and early.json()["error"] == "not_ready" and "running" in early.json()["detail"]
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert left == 0  # its tiles left the queues at once
    assert after["status"] == "cancelled" and after["tiles_done"] == 0
    assert result.status_code == 404 and "cancelled" in result.json()["detail"]
    assert metric(metrics, "sr_jobs_finished_total", status="done") == 0


def test_job_errors_at_creation_and_while_running(repo, tmp_path):
    truncated = image_bytes(40, 40)[:200]  # a valid header, then nothing: fails when decoded

    async def scenario():
        async with running_app(settings(repo, tmp_path, job_max_pixels=100 * 100, job_max_body_bytes=50_000)) \
                as (app, client):
            answers = {
                "bad_image": await client.post("/v1/jobs", content=b"not an image", headers=PNG),
                "unknown_model": await client.post("/v1/jobs?model=nope", content=image_bytes(8, 8), headers=PNG),
                "scale": await client.post("/v1/jobs?model=edsr&scale=3", content=image_bytes(8, 8), headers=PNG),
                "pixels": await client.post("/v1/jobs", content=image_bytes(101, 100), headers=PNG),
                "body": await client.post("/v1/jobs", content=b"x" * 50_001, headers=PNG),
                "media": await client.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}),
                "bad_id": await client.get("/v1/jobs/..%2F..%2Fetc"),
                "unknown_id": await client.get("/v1/jobs/" + "A" * 24),
            }
            job = (await client.post("/v1/jobs?model=edsr&scale=2", content=truncated, headers=PNG)).json()
            failed = await wait_status(client, job["id"])
            result = await client.get(job["links"]["result"])
            return answers, failed, result

    answers, failed, result = asyncio.run(scenario())
    expected = {"bad_image": (400, "bad_image"), "unknown_model": (404, "unknown_model"),
                "scale": (422, "invalid_parameter"), "pixels": (413, "too_large"), "body": (413, "too_large"),
                "media": (415, "unsupported_media_type"), "bad_id": (404, "not_found"),
                "unknown_id": (404, "not_found")}
    for name, (status, code) in expected.items():
        reply = answers[name]
        assert (reply.status_code, reply.json().get("error")) == (status, code), (name, reply.text)
    assert failed["status"] == "failed" and failed["error"]["error"] == "bad_image"
    assert "cannot decode" in failed["error"]["detail"]
    assert result.status_code == 404 and "failed" in result.json()["detail"]


def test_expiry_410_disk_bound_503_and_api_keys(repo, tmp_path):
    body = image_bytes(24, 24, seed=1)

    async def scenario():
        overrides = dict(api_keys=["alice-key", "bob-key"], jobs_max_bytes=len(body) + 100, job_ttl_s=60)
        async with running_app(settings(repo, tmp_path, **overrides)) as (app, client):
            alice, bob = {"X-API-Key": "alice-key", **PNG}, {"Authorization": "Bearer bob-key"}
            store = app.state.service.jobs.store
            anonymous = await client.post("/v1/jobs?model=edsr&scale=2", content=body, headers=PNG)
            async with hold(app):
                job = (await client.post("/v1/jobs?model=edsr&scale=2", content=body, headers=alice)).json()
                full = await client.post("/v1/jobs?model=edsr&scale=2", content=body, headers=alice)
            done = await wait_status(client, job["id"], headers=alice)
            seen = {"bob": await client.get(job["links"]["self"], headers=bob),
                    "bob_result": await client.get(job["links"]["result"], headers=bob),
                    "bob_cancel": await client.delete(job["links"]["self"], headers=bob),
                    "alice_result": await client.get(job["links"]["result"], headers=alice)}
            stored = store.get(job["id"])
            await asyncio.get_running_loop().run_in_executor(None, store.sweep, time.time() + 61, 60.0)
            expired = await client.get(job["links"]["result"], headers=alice)
            view = (await client.get(job["links"]["self"], headers=alice)).json()
            return anonymous, full, done, seen, stored, expired, view

    anonymous, full, done, seen, stored, expired, view = asyncio.run(scenario())
    assert anonymous.status_code == 401
    assert full.status_code == 503 and full.json()["error"] == "jobs_full" and int(full.headers["retry-after"]) > 0
    assert done["status"] == "done"
    assert {name: r.status_code for name, r in seen.items()} == {"bob": 404, "bob_result": 404, "bob_cancel": 404,
                                                                   "alice_result": 200}
    assert "alice-key" not in stored.to_json() and stored.key_hash  # a hash of the key, not the key
    assert expired.status_code == 410 and expired.json()["error"] == "expired"
    assert view["expired"] is True and view["status"] == "done"


def test_sqlite_spool_requeues_a_dead_servers_jobs_and_refuses_a_second_server(tmp_path):
    store = SqliteJobStore(tmp_path / "spool")
    record = JobRecord(id="job-one-abcdef", params={"model": "edsr"}, created_at=time.time(), input_bytes=3)
    store.create(record, b"abc", max_bytes=0)
    claimed = store.claim("server-a", time.time(), 30.0)
    assert claimed.status == "running" and claimed.attempts == 1
    with pytest.raises(SpoolInUse, match="another server"):
        SqliteJobStore(tmp_path / "spool")
    store._lock_file.close()  # what a SIGKILL does to the lock; the database is left as it was
    reopened = SqliteJobStore(tmp_path / "spool")
    again = reopened.claim("server-b", time.time(), 30.0)
    assert again.id == record.id and again.attempts == 2 and reopened.read_input(record.id) == b"abc"
    assert not store.heartbeat(record.id, "server-a", time.time(), 30.0, 1, 2)  # the old owner lost it
    reopened.close()


def test_cache_hit_answers_without_inference(repo, tmp_path):
    body = image_bytes(40, 36, seed=7)

    async def scenario():
        async with running_app(settings(repo, tmp_path, cache_bytes=64 << 20)) as (app, client):
            scheduler = app.state.service.engine.scheduler
            first = await client.post("/upscale?model=edsr&scale=2", content=body, headers=PNG)
            batches = scheduler.batches_run
            second = await client.post("/upscale?model=edsr&scale=2", content=body, headers=PNG)
            same_defaults = await client.post("/upscale?model=edsr&scale=2&format=png&self_ensemble=false",
                                              content=body, headers=PNG)
            revalidated = await client.post("/upscale?model=edsr&scale=2", content=body,
                                            headers={**PNG, "If-None-Match": first.headers["etag"]})
            job = (await client.post("/v1/jobs?model=edsr&scale=2", content=body, headers=PNG)).json()
            view = await wait_status(client, job["id"])
            job_result = await client.get(job["links"]["result"])
            job_304 = await client.get(job["links"]["result"], headers={"If-None-Match": first.headers["etag"]})
            after = scheduler.batches_run
            other = await client.post("/upscale?model=edsr&scale=2&format=webp", content=body, headers=PNG)
            metrics = (await client.get("/metrics")).text
            return first, second, same_defaults, revalidated, view, job_result, job_304, batches, after, \
                scheduler.batches_run, other, metrics

    first, second, same, revalidated, view, job_result, job_304, batches, after, final, other, metrics = \
        asyncio.run(scenario())
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit" == same.headers["x-cache"]
    assert second.content == first.content == same.content == job_result.content
    assert second.headers["etag"] == first.headers["etag"] and first.headers["etag"].startswith('W/"')
    assert second.headers["x-inference-ms"] == "0.0"
    assert revalidated.status_code == 304 and not revalidated.content
    assert view["result"]["cache"] == "hit" and job_result.headers["x-cache"] == "hit"
    assert job_304.status_code == 304
    assert after == batches  # hits, the 304 and the cached job ran nothing
    assert other.headers["x-cache"] == "miss" and final > after  # another format is another result
    assert metric(metrics, "sr_cache_hits_total") == 3 and metric(metrics, "sr_cache_misses_total") == 2
    assert metric(metrics, "sr_cache_bytes") == len(first.content) + len(other.content)


def test_cache_off_runs_every_request(repo, tmp_path):
    body = image_bytes(20, 20, seed=8)

    async def scenario():
        async with running_app(settings(repo, tmp_path)) as (app, client):  # cache_bytes=0: off
            scheduler = app.state.service.engine.scheduler
            replies = []
            for _ in range(2):
                replies.append(await client.post("/upscale?model=edsr&scale=2", content=body, headers=PNG))
                replies.append(scheduler.batches_run)
            return replies, (await client.get("/metrics")).text

    (first, batches_1, second, batches_2), metrics = asyncio.run(scenario())
    assert first.headers["x-cache"] == second.headers["x-cache"] == "miss" and batches_2 > batches_1
    assert metric(metrics, "sr_cache_hits_total") == 0 and metric(metrics, "sr_cache_misses_total") == 0


def test_openapi_lists_the_jobs_api(repo, tmp_path):
    async def scenario():
        async with running_app(settings(repo, tmp_path)) as (_, client):
            return (await client.get("/openapi.json")).json(), await client.get("/")

    spec, page = asyncio.run(scenario())
    paths = spec["paths"]
    create = paths["/v1/jobs"]["post"]
    assert {"image/*", "multipart/form-data"} <= set(create["requestBody"]["content"])
    assert {p["name"] for p in create["parameters"]} >= {"model", "scale", "outscale", "self_ensemble", "format"}
    assert {"202", "400", "401", "413", "503"} <= set(create["responses"])
    assert set(paths["/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert {"200", "304", "404", "410"} <= set(paths["/v1/jobs/{job_id}/result"]["get"]["responses"])
    assert "304" in paths["/upscale"]["post"]["responses"]
    assert "/" not in paths  # the page is not API
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ("file", "model", "scale", "upscale", "progress", "result", "download", "error"):
        assert f'id="{element}"' in page.text


def test_store_errors_are_503_not_500(repo, tmp_path):
    import sqlite3

    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    async def scenario():
        async with running_app(settings(repo, tmp_path)) as (app, client):
            app.state.service.jobs.store.get = broken
            app.state.service.jobs.store.create = broken
            return (await client.get("/v1/jobs/" + "A" * 24),
                    await client.post("/v1/jobs?model=edsr&scale=2", content=image_bytes(8, 8), headers=PNG))

    for reply in asyncio.run(scenario()):
        assert reply.status_code == 503 and reply.json()["error"] == "jobs_unavailable", reply.text
        assert "retry-after" in reply.headers
