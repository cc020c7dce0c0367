"""Faults with real processes and services: killed workers, a broker outage, caps, a burst."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import docker
import psycopg
import pytest

from tests.conftest import api_of, free_port

BURST = int(os.environ.get("CODERUND_TEST_BURST", "1000"))
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"


def own(settings, name: str, **changes):
    return dataclasses.replace(settings, queue=f"{settings.queue}.{name}", port=free_port(), **changes)


async def rows(settings, sql: str, *params):
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        return await (await conn.execute(sql, params)).fetchall()


async def test_sigkill_a_worker_mid_task(settings, spawn):
    s = own(settings, "kill", concurrency=2)
    spawn(s, "--role", "api")
    doomed = spawn(s, "--role", "worker")
    async with api_of(s) as api:
        token = await api.user()
        ids = [await api.submit(token, language="python", code=f"import time; time.sleep(2); print({i})") for i in range(4)]
        for _ in range(100):
            running = await rows(s, "SELECT id FROM tasks WHERE id = ANY(%s::uuid[]) AND state = 'running'", ids)
            if running:
                break
            await asyncio.sleep(0.1)
        assert running
        [(doomed_id,)] = await rows(s, "SELECT DISTINCT worker FROM tasks WHERE id = ANY(%s::uuid[]) AND state = 'running'", ids)
        for _ in range(100):  # its containers, the task's and warm ones (a task claimed a moment ago may wait for one)
            if docker.from_env().api.containers(filters={"label": f"coderund.worker={doomed_id}"}):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the worker holds no container")
        doomed.send_signal(signal.SIGKILL)
        spawn(s, "--role", "worker")
        results = await asyncio.gather(*(api.result(token, i) for i in ids))
    assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(4)]
    assert all(r["verdict"] == "ok" for r in results)
    attempts = await rows(s, "SELECT attempts FROM tasks WHERE id = ANY(%s::uuid[])", ids)
    assert max(a[0] for a in attempts) >= 2  # the killed worker's tasks ran again
    # Its containers, the tasks' and the warm ones it held, are swept once its heartbeat lapses.
    for _ in range(90):
        left = docker.from_env().api.containers(all=True, filters={"label": f"coderund.worker={doomed_id}"})
        if not left:
            break
        await asyncio.sleep(1)
    assert not left, [c["Names"] for c in left]


async def test_queue_and_per_user_caps(settings):
    from coderund.daemon import serve

    s = own(settings, "caps", role="api", max_queue=3, user_max_pending=2)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(s, stop))
    try:
        async with api_of(s) as api:
            first, second = await api.user(), await api.user()
            for _ in range(2):
                await api.submit(first, language="python", code="print(1)")
            before = await rows(s, "SELECT count(*) FROM tasks")
            status, body, headers = await api.call("POST", "/task", token=first, json={"language": "python", "code": "x"})
            assert status == 429 and body["error"] == "rate_limited" and int(headers["Retry-After"]) > 0
            await api.submit(second, language="python", code="print(2)")
            await asyncio.sleep(1.2)  # the queue depth is sampled at most once a second
            status, body, headers = await api.call("POST", "/task", token=second, json={"language": "python", "code": "x"})
            assert status == 503 and body["error"] == "queue_full" and int(headers["Retry-After"]) > 0
            assert await rows(s, "SELECT count(*) FROM tasks") == [(before[0][0] + 1,)]
    finally:
        stop.set()
        await running


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_rabbitmq_outage_is_503_and_heals(settings, spawn):
    s = own(settings, "outage")
    spawn(s, "--role", "api")
    spawn(s, "--role", "worker")
    async with api_of(s) as api:
        token = await api.user()
        assert (await api.run(token, language="python", code="print('before')"))["stdout"] == "before\n"
        before = await rows(s, "SELECT count(*) FROM tasks")
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        try:
            started = time.monotonic()
            status, body, headers = await api.call("POST", "/task", token=token, json={"language": "python", "code": "print(1)"})
            assert status == 503 and body["error"] == "unavailable" and "Retry-After" in headers
            assert time.monotonic() - started < 10
            assert await rows(s, "SELECT count(*) FROM tasks") == before  # nothing half-made
            status, body, _ = await api.call("GET", "/readyz")
            assert status == 503 and "rabbitmq" in body["message"]
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        for _ in range(60):  # the API reconnects on the next call, the worker with its backoff
            status, body, _ = await api.call("POST", "/task", token=token, json={"language": "python", "code": "print('after')"})
            if status == 201:
                break
            await asyncio.sleep(1)
        assert status == 201, body
        assert (await api.result(token, body["task_id"]))["stdout"] == "after\n"


async def test_postgres_outage_is_503_and_heals(settings, spawn, api):
    s = own(settings, "pg")
    spawn(s, "--role", "api")
    async with api_of(s) as own_api:
        token = await own_api.user()
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        await asyncio.to_thread(subprocess.run, [*cluster, "stop", "-m", "fast"], check=True, timeout=60)
        try:
            started = time.monotonic()
            status, body, headers = await own_api.call("GET", f"/status/{uuid.uuid4()}", token=token)
            assert status == 503 and body["error"] == "unavailable" and "Retry-After" in headers
            status, body, _ = await own_api.call("POST", "/register", json={"username": f"pg_{uuid.uuid4().hex[:8]}",
                                                                             "password": "password123"})
            assert status == 503 and body["error"] == "unavailable"
            assert time.monotonic() - started < 20
        finally:
            await asyncio.to_thread(subprocess.run, [*cluster, "start"], check=True, timeout=60)
        for _ in range(30):
            status, _, _ = await own_api.call("GET", f"/status/{uuid.uuid4()}", token=token)
            if status == 404:
                break
            await asyncio.sleep(1)
        assert status == 404  # the pool healed without a restart
    for _ in range(30):  # the session's own server heals as well
        if (await api.call("GET", "/readyz"))[0] == 200:
            break
        await asyncio.sleep(1)
    assert (await api.call("GET", "/readyz"))[0] == 200


@pytest.mark.timeout(900)
async def test_burst_from_many_users(settings, spawn):
    """BURST tasks from 20 users through two workers: every one correct, none lost or run twice."""
    s = own(settings, "burst", concurrency=2)
    spawn(s, "--role", "api")
    spawn(s, "--role", "worker")
    spawn(s, "--role", "worker")
    async with api_of(s) as api:
        tokens = [await api.user("burst") for _ in range(20)]
        started = time.monotonic()
        ids = await asyncio.gather(*(api.submit(tokens[i % 20], language="python", code=f"print({i} * 2)")
                                     for i in range(BURST)))
        submitted = time.monotonic() - started
        results = await asyncio.gather(*(api.result(tokens[i % 20], task_id, timeout=900) for i, task_id in enumerate(ids)))
        duration = time.monotonic() - started
    assert [r["stdout"] for r in results] == [f"{i * 2}\n" for i in range(BURST)]
    assert {r["verdict"] for r in results} == {"ok"}
    retried = (await rows(s, "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND attempts > 1", ids))[0][0]
    line = (f"burst: {BURST} tasks from 20 users, submitted in {submitted:.1f} s, all done in {duration:.1f} s "
            f"({BURST / duration:.1f} tasks/s), {retried} retried\n")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "burst.txt").write_text(line)


async def test_a_duplicate_delivery_changes_nothing(settings, api):
    from coderund.repository.queue import Queue

    token = await api.user()
    task_id = await api.submit(token, language="python", code="import random; print(random.random())")
    first = await api.result(token, task_id)
    queue = Queue(settings.amqp_url, settings.queue)
    for _ in range(2):
        await queue.publish(uuid.UUID(task_id))  # the broker may deliver a message again
    await queue.close()
    await asyncio.sleep(2)
    again = await api.result(token, task_id)
    assert again == first  # same output, same finished_at: not run again, not flipped back
    assert (await rows(settings, "SELECT attempts FROM tasks WHERE id = %s", task_id))[0][0] == 1


def redis_server(action: str) -> None:
    if action == "stop":
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30)
    else:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
                        "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
                       check=True, capture_output=True, timeout=30)


async def test_redis_outage_is_503_and_heals(settings, spawn):
    s = own(settings, "redis")
    spawn(s, "--role", "api")
    async with api_of(s) as api:
        token = await api.user()
        await asyncio.to_thread(redis_server, "stop")
        try:
            status, body, headers = await api.call("GET", f"/status/{uuid.uuid4()}", token=token)
            assert status == 503 and body["error"] == "unavailable" and "Retry-After" in headers
            status, body, _ = await api.call("POST", "/login", json={"username": "someone", "password": "password1"})
            assert status == 503 and body["error"] == "unavailable"
            assert (await api.call("GET", "/readyz"))[0] == 503
        finally:
            await asyncio.to_thread(redis_server, "start")
        for _ in range(30):  # wait for Redis itself, not for coderund
            if subprocess.run(["redis-cli", "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                break
            await asyncio.sleep(0.5)
        # Redis here keeps nothing on disk, so sessions are gone; logging in again works at once:
        # the very first call after the restart succeeds, on connections that were dead.
        fresh = await api.user()
        assert (await api.call("GET", "/readyz"))[0] == 200
        assert (await api.call("GET", f"/status/{uuid.uuid4()}", token=fresh))[0] == 404
        # A restart while coderund is idle leaves its pooled connections dead: the next call still works.
        await asyncio.to_thread(redis_server, "stop")
        await asyncio.to_thread(redis_server, "start")
        await asyncio.sleep(0.5)
        assert await api.user()
