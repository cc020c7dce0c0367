"""Real services for the tests: a database and a queue of this run's own, a coderund daemon in-process."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import aiormq
import docker
import psycopg
import pytest

from coderund import config
from coderund.config import Settings
from coderund.daemon import serve
from coderund.repository.db import migrate, with_database

RUN_ID = uuid.uuid4().hex[:10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(**overrides: Any) -> Settings:
    """Settings of this test run: its own database and queue, so runs never see each other."""
    base = config.load({}, environ={})
    values = {
        "database_url": with_database(base.database_url, f"coderund_test_{RUN_ID}"),
        "queue": f"coderund.test.{RUN_ID}",
        # A Redis database apart from the default one: the schemathesis run logs in as the document's
        # example user "alice" with wrong passwords, and must not lock out the README's alice.
        "redis_url": "redis://127.0.0.1:6379/15",
        "host": "127.0.0.1",
        "port": free_port(),
        "concurrency": 2,
        "log_level": "WARNING",
        "retention_days": 0,  # tests that want the sweeper to delete old tasks start a worker of their own
        "login_per_address": 0,  # every test user registers from 127.0.0.1; the limit's own test sets it
        **overrides,
    }
    return dataclasses.replace(base, **values)


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that makes a coderund subprocess use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERUND_")}
    for field in dataclasses.fields(Settings):
        env[config.env_name(field.name)] = str(getattr(settings, field.name))
    return env


class Api:
    """A thin client of the HTTP API, as a user would drive it."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> tuple[int, Any, Any]:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, body, response.headers

    async def user(self, prefix: str = "user") -> str:
        """Registers a new user and returns a session token."""
        username = f"{prefix}_{uuid.uuid4().hex[:12]}"
        status, body, _ = await self.call("POST", "/register", json={"username": username, "password": "password123"})
        assert status == 201, body
        status, body, _ = await self.call("POST", "/login", json={"username": username, "password": "password123"})
        assert status == 200, body
        return body["token"]

    async def submit(self, token: str, **task: Any) -> str:
        status, body, _ = await self.call("POST", "/task", token=token, json=task)
        assert status == 201, body
        return body["task_id"]

    async def result(self, token: str, task_id: str, timeout: float = 90) -> dict[str, Any]:
        """Waits on the server (`wait`), as a client should, rather than polling."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            status, body, _ = await self.call("GET", f"/result/{task_id}?wait={min(left, 30):.1f}", token=token)
            if status == 200:
                return body
            assert status == 202, body
        raise AssertionError(f"task {task_id} not ready after {timeout} s")

    async def run(self, token: str, **task: Any) -> dict[str, Any]:
        return await self.result(token, await self.submit(token, **task))


async def container_of(settings: Settings, task_id: str) -> str:
    """The sandbox container a finished task ran in (its last step's), as the worker recorded it."""
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        row = await (await conn.execute("SELECT container FROM tasks WHERE id = %s", (task_id,))).fetchone()
    assert row and row[0], f"task {task_id} has no container recorded"
    return row[0]


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    settings = make_settings()
    asyncio.run(migrate(settings.database_url))
    # The tests' Redis database outlives each run's PostgreSQL one (sessions, rates): user ids of a run
    # of their own, so no run meets another's user of the same id there (below 2**31: advisory locks take int4s).
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("SELECT setval('users_id_seq', %s::bigint)", (int(RUN_ID, 16) % 2_000_000 * 1000 + 1,))
    yield settings
    drop_database(settings.database_url)
    asyncio.run(_delete_queue(settings))


def drop_database(url: str) -> None:
    """Drops a database a test made (its owner may, the default URL's role being no superuser)."""
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


async def _delete_queue(settings: Settings) -> None:
    connection = await aiormq.connect(settings.amqp_url)
    channel = await connection.channel()
    await channel.queue_delete(settings.queue)
    await connection.close()


async def wait_until_up(base: str, timeout: float = 30, path: str = "/healthz") -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(base + path) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"coderund at {base} did not come up")


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[str]:
    """One coderund --role all for the session, in this process."""
    stop = asyncio.Event()
    running = asyncio.create_task(serve(settings, stop))
    base = f"http://127.0.0.1:{settings.port}"
    await wait_until_up(base)
    yield base
    stop.set()
    await asyncio.wait_for(running, 90)


@pytest.fixture
async def api(server: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server)


@contextlib.asynccontextmanager
async def api_of(settings: Settings) -> AsyncIterator[Api]:
    """A client of the coderund that these settings point at, once it is up."""
    base = f"http://127.0.0.1:{settings.port}"
    await wait_until_up(base)
    async with aiohttp.ClientSession() as session:
        yield Api(session, base)


@contextlib.asynccontextmanager
async def own_server(settings: Settings, **changes: Any) -> AsyncIterator[Api]:
    """A coderund of the test's own, in this process, on a port of its own and with these changes to
    the settings (`api.settings`), serving for the block."""
    own = dataclasses.replace(settings, port=free_port(), **changes)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(own, stop))
    try:
        async with api_of(own) as api:
            api.settings = own
            yield api
    finally:
        stop.set()
        await running


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Starts real coderund processes; whatever a test leaves running is stopped after it."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
        # Several workers on one host each need a metrics port of their own.
        settings = dataclasses.replace(settings, metrics_port=free_port())
        process = subprocess.Popen([sys.executable, "-m", "coderund", *args], env=env_of(settings))
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


RUNTIMES = ["runc", "runsc"]


@functools.cache
def gvisor_missing() -> str | None:
    """Why the gVisor tests cannot run on this engine, or None: runsc must be registered with it."""
    if "runsc" in docker.from_env().info().get("Runtimes", {}):
        return None
    return "gVisor: runsc is not registered with the Docker engine (scripts/test-env says how, docs/testing.md)"


@pytest.fixture(scope="module", params=RUNTIMES)
async def runtime_api(request, server, settings):
    """Each runtime's coderund: the session's for runc; for gVisor, a second one in this process (on a
    workstation whose engine lacks runsc, skipped by name; on CI a failure: there every test runs)."""
    if request.param == "runsc" and (missing := gvisor_missing()):
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI runs every test under both runtimes")
        pytest.skip(missing)
    if request.param == "runc":
        async with api_of(settings) as api:
            api.runtime, api.settings = "runc", settings
            yield api
        return
    gvisor = dataclasses.replace(settings, runtime="runsc", port=free_port(), queue=f"{settings.queue}.runsc")
    stop = asyncio.Event()
    running = asyncio.create_task(serve(gvisor, stop))
    async with api_of(gvisor) as api:
        api.runtime, api.settings = "runsc", gvisor
        yield api
    stop.set()
    await running
