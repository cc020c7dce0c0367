"""Real coderund processes: workers joining late, sharing a queue, draining on SIGTERM, new languages."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import docker
import psycopg
import pytest

from coderund.config import DEFAULT_PLUGINS_DIR
from tests.conftest import RUNTIMES, Api, api_of, env_of, free_port, own_server, wait_until_up


async def statuses(api: Api, token: str, ids: list[str]) -> list[str]:
    return [(await api.call("GET", f"/status/{i}", token=token))[1]["status"] for i in ids]


async def workers_of(settings, ids: list[str]) -> set[str]:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cursor = await conn.execute("SELECT DISTINCT worker FROM tasks WHERE id = ANY(%s::uuid[])", (ids,))
        return {row[0] for row in await cursor.fetchall()}


async def test_late_worker_picks_up_queued_tasks_and_two_workers_share(settings, spawn):
    own = dataclasses.replace(settings, queue=f"{settings.queue}.late", port=free_port(), concurrency=1)
    spawn(own, "--role", "api")
    async with api_of(own) as api:
        token = await api.user()
        ids = [await api.submit(token, language="python", code=f"import time; time.sleep(0.5); print({i})")
               for i in range(6)]
        await asyncio.sleep(1)
        assert await statuses(api, token, ids) == ["in_progress"] * 6  # nobody consumes yet
        spawn(own, "--role", "worker")
        spawn(own, "--role", "worker")
        results = await asyncio.gather(*(api.result(token, i) for i in ids))
        assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(6)]
        assert len(await workers_of(own, ids)) == 2  # both workers took a share


async def test_sigterm_drains_running_tasks_and_exits_0(settings, spawn):
    own = dataclasses.replace(settings, queue=f"{settings.queue}.drain", port=free_port(), concurrency=2)
    process = spawn(own, "--role", "all")
    async with api_of(own) as api:
        token = await api.user()
        task_id = await api.submit(token, language="python", code="import time; time.sleep(2); print('finished')")
        for _ in range(100):
            async with await psycopg.AsyncConnection.connect(own.database_url) as conn:
                row = await (await conn.execute("SELECT state FROM tasks WHERE id = %s", (task_id,))).fetchone()
            if row[0] == "running":
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
    async with await psycopg.AsyncConnection.connect(own.database_url) as conn:
        row = await (await conn.execute("SELECT state, stdout, worker FROM tasks WHERE id = %s", (task_id,))).fetchone()
    assert row[0] == "done" and bytes(row[1]) == b"finished\n"
    # It took its warm containers with it.
    assert not docker.from_env().api.containers(all=True, filters={"label": f"coderund.worker={row[2]}"})


async def test_a_new_language_is_one_file(settings, spawn, tmp_path):
    plugins = tmp_path / "plugins"
    shutil.copytree(DEFAULT_PLUGINS_DIR, plugins)
    (plugins / "awk.toml").write_text(textwrap.dedent("""
        name = "awk"
        aliases = ["mawk"]
        version = "mawk 1.3"
        image = "coderund/bash:bookworm"   # mawk is in every Debian image
        source_file = "main.awk"
        run = ["mawk", "-f", "main.awk"]
        [limits]
        time_ms = 2000
        memory_mb = 64
    """))
    own = dataclasses.replace(settings, queue=f"{settings.queue}.awk", port=free_port(), plugins_dir=str(plugins))
    listing = subprocess.run([sys.executable, "-m", "coderund", "languages"], env=env_of(own),
                             capture_output=True, text=True, check=True)
    assert "awk" in listing.stdout and "python" in listing.stdout
    spawn(own, "--role", "all")
    async with api_of(own) as api:
        token = await api.user()
        result = await api.run(token, language="mawk", code='{ print "hi " $0 " from " FILENAME }', stdin="you\n")
        assert result["verdict"] == "ok" and result["stdout"] == "hi you from -\n"
        assert result["language"] == "awk"
        status, body, _ = await api.call("GET", "/languages")
        assert "awk" in {lang["name"] for lang in body["languages"]}


@pytest.fixture
def python_and_a_ghost(tmp_path) -> Path:
    """A plugins folder of python alone (no javascript, which the warm stateful sandboxes once
    assumed) and a plugin whose image was never built."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(DEFAULT_PLUGINS_DIR / "python.toml", plugins)
    (plugins / "ghost.toml").write_text(textwrap.dedent("""
        name = "ghost"
        version = "1"
        image = "coderund/ghost:never-built"
        source_file = "main.sh"
        run = ["sh", "main.sh"]
        [limits]
        time_ms = 2000
        memory_mb = 64
    """))
    return plugins


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_any_subset_of_plugins_serves_and_a_missing_image_is_named(settings, python_and_a_ghost, runtime):
    """The daemon serves, /readyz names the missing image, and so does the result of its language's task."""
    plugins = python_and_a_ghost
    async with own_server(settings, plugins_dir=str(plugins), queue=f"{settings.queue}.subset", runtime=runtime) as api:
        status, body, _ = await api.call("GET", "/readyz")
        assert status == 503 and "images" in body["message"]
        assert "coderund/ghost:never-built of language ghost is missing" in body["checks"]["images"]
        assert "coderund images build ghost" in body["checks"]["images"] and "python" not in body["checks"]["images"]
        token = await api.user("subset")
        assert (await api.run(token, language="python", code="print('hi')"))["stdout"] == "hi\n"
        ghost = await api.submit(token, language="ghost", code="echo boo")
        result = await api.result(token, ghost)
        assert result["verdict"] == "internal_error"
        assert result["stderr"] == ("coderund: the image coderund/ghost:never-built of language ghost is missing; the operator"
                                    " builds it with `coderund images build ghost`\n")
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            row = await (await conn.execute("SELECT attempts FROM tasks WHERE id = %s", (ghost,))).fetchone()
        assert row[0] == 1  # refused at once: no retries of what cannot work
        status, body, _ = await api.call("POST", "/sandboxes", token=token, json={"language": "javascript"})
        assert status == 503 and "'javascript' is not supported" in body["message"]  # at once, not after a placement wait


async def test_a_worker_without_the_api_names_a_missing_image_on_its_metrics_port(settings, python_and_a_ghost):
    from coderund.daemon import serve

    worker = dataclasses.replace(settings, role="worker", metrics_port=free_port(), plugins_dir=str(python_and_a_ghost),
                                 queue=f"{settings.queue}.ghost-worker")
    stop = asyncio.Event()
    running = asyncio.create_task(serve(worker, stop))
    try:
        base = f"http://127.0.0.1:{worker.metrics_port}"
        await wait_until_up(base, path="/metrics")
        async with aiohttp.ClientSession() as session:
            status, body, _ = await Api(session, base).call("GET", "/readyz")
    finally:
        stop.set()
        await running
    assert status == 503 and "coderund/ghost:never-built of language ghost is missing" in body["checks"]["images"]
    assert body["checks"]["docker"] == "ok"


def test_bad_plugin_stops_the_start_naming_file_and_field(settings, tmp_path):
    (tmp_path / "broken.toml").write_text('name = "x"\nversion = "1"\nimage = "i"\nsource_file = "m"\nrun = "m"\n[limits]\ntime_ms = 1\nmemory_mb = 1\n')
    own = dataclasses.replace(settings, plugins_dir=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "coderund", "--role", "api"], env=env_of(own),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "broken.toml" in done.stderr and "'run'" in done.stderr


def test_cli_errors_are_one_line(settings):
    cases = [
        ({"database_url": "mysql://nope"}, "CODERUND_DATABASE_URL"),
        ({"database_url": "postgresql://postgres@127.0.0.1:1/x"}, "CODERUND_DATABASE_URL"),
        ({"concurrency": 0}, "CODERUND_CONCURRENCY"),
    ]
    for overrides, needle in cases:
        env = env_of(dataclasses.replace(settings, **overrides))
        done = subprocess.run([sys.executable, "-m", "coderund", "migrate"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and needle in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr
    env = env_of(settings) | {"CODERUND_PORT": "eighty"}
    done = subprocess.run([sys.executable, "-m", "coderund", "migrate"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "CODERUND_PORT" in done.stderr


def test_port_taken_is_one_line(settings):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        own = dataclasses.replace(settings, role="api", port=port, queue=f"{settings.queue}.{uuid.uuid4().hex[:6]}")
        done = subprocess.run([sys.executable, "-m", "coderund"], env=env_of(own), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "CODERUND_PORT" in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_help_lists_every_setting():
    done = subprocess.run([sys.executable, "-m", "coderund", "--help"], capture_output=True, text=True, check=True)
    for name in ("--role", "--database-url", "--redis-url", "--amqp-url", "--port", "--concurrency", "--runtime",
                 "CODERUND_DATABASE_URL", "migrate", "images", "languages"):
        assert name in done.stdout


async def test_a_task_that_keeps_killing_workers_ends_as_internal_error(settings, api):
    """A task delivered max_attempts times already (each time its worker died) is not run again."""
    from coderund.repository.queue import Queue

    token = await api.user()
    task_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        # The user is whoever owns the token: borrow the newest account.
        user_id = (await (await conn.execute("SELECT max(id) FROM users")).fetchone())[0]
        await conn.execute(
            "INSERT INTO tasks (id, user_id, language, code, time_ms, memory_mb, state, attempts)"
            " VALUES (%s, %s, 'python', 'print(1)', 1000, 64, 'running', %s)",
            (task_id, user_id, settings.max_attempts),
        )
    queue = Queue(settings.amqp_url, settings.queue)
    await queue.publish(task_id)  # the redelivery after the last crash
    await queue.close()
    result = await api.result(token, str(task_id))
    assert result["verdict"] == "internal_error" and result["stdout"] == ""


def test_worker_removes_containers_of_dead_workers_of_its_own_deployment_only(settings, spawn):
    """A dead worker's container of this deployment goes; another deployment's on the same engine,
    whose workers this database does not know, stays (two deployments once killed each other's)."""
    import docker

    with psycopg.connect(settings.database_url) as conn:
        deployment = str(conn.execute("SELECT id FROM deployment").fetchone()[0])
    client = docker.from_env()

    def sleeper(deployment: str) -> Any:
        return client.containers.run("coderund/python:bookworm", ["sleep", "infinity"], detach=True, network_mode="none",
                                     labels={"coderund": "1", "coderund.deployment": deployment, "coderund.worker": "dead-worker"})

    leftover, foreign = sleeper(deployment), sleeper(str(uuid.uuid4()))
    try:
        own = dataclasses.replace(settings, queue=f"{settings.queue}.sweep", port=free_port())
        spawn(own, "--role", "worker")
        for _ in range(300):
            try:
                client.containers.get(leftover.id)
            except docker.errors.NotFound:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the leftover container is still there")
        time.sleep(1)  # the sweep that removed it has looked at every container
        assert client.containers.get(foreign.id).status == "running"
    finally:
        for container in (leftover, foreign):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


async def test_orphans_are_tasks_of_workers_silent_past_the_lease(api, settings):
    """The sweep reads who lives in the same statement that takes the orphans: a worker that
    registered a moment before its claim is never taken for dead (a stale list once did that)."""
    from coderund.repository.db import Database
    from coderund.repository.tasks import Tasks
    from coderund.repository.workers import Workers

    token = await api.user("orphans")
    fresh, silent = await api.submit(token, language="python", code="print(1)"), await api.submit(token, language="python", code="print(2)")
    await api.result(token, fresh), await api.result(token, silent)
    db = Database(settings.database_url)
    await db.open()
    try:
        workers = Workers(db)
        for worker in ("fresh-worker", "silent-worker"):
            await workers.heartbeat(worker, "test")
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
            await conn.execute("UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'silent-worker'")
            for task_id, worker in ((fresh, "fresh-worker"), (silent, "silent-worker")):
                await conn.execute("UPDATE tasks SET state = 'running', worker = %s WHERE id = %s", (worker, task_id))
        assert await Tasks(db).requeue_orphans(lease_s=30, unpublished_after_s=30) == [uuid.UUID(silent)]
    finally:
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
            await conn.execute("UPDATE tasks SET state = 'done' WHERE id = ANY(%s::uuid[])", ([fresh, silent],))
            await conn.execute("DELETE FROM workers WHERE id IN ('fresh-worker', 'silent-worker')")
        await db.close()
