"""Wiring: open what a role needs, serve until SIGTERM, drain, close."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import docker
import psycopg
from aiohttp import web

from . import plugins as plugin_loader
from .api.app import make_app
from .api.keys import Services
from .config import ConfigError, Settings, env_name
from .errors import Unavailable
from .repository.db import Database, migrate
from .repository.queue import Queue
from .repository.sessions import Sessions
from .repository.tasks import Tasks
from .repository.users import Users
from .repository.workers import Workers
from .sandbox import supervisor
from .sandbox.options import Isolation
from .sandbox.runner import Sandbox
from .usecases import Accounts, Executor, TaskService
from .worker import Worker

log = logging.getLogger(__name__)
API_SHUTDOWN_S = 10  # for requests in flight when SIGTERM comes
WORKER_DRAIN_S = 60  # for tasks in flight; past that they go back to the queue
DOCKER_TIMEOUT_S = 120


def docker_client(settings: Settings, pool: int = 10) -> docker.DockerClient:
    if settings.docker_url:
        return docker.DockerClient(base_url=settings.docker_url, timeout=DOCKER_TIMEOUT_S, max_pool_size=pool)
    return docker.from_env(timeout=DOCKER_TIMEOUT_S, max_pool_size=pool)


def make_sandbox(settings: Settings) -> Sandbox:
    client = docker_client(settings, pool=settings.concurrency * 2 + 2)
    isolation = Isolation(runtime=settings.runtime, tmpfs_mb=settings.tmpfs_mb, pids_limit=settings.pids_limit)
    return Sandbox(
        client,
        isolation=isolation,
        output_limit=settings.output_limit,
        supervisor_binary=supervisor.build(Path(settings.cache_dir)),
        threads=settings.concurrency * 2 + 2,
    )


@contextlib.asynccontextmanager
async def reachable(setting: str, url: str) -> AsyncIterator[None]:
    """At start, an unreachable dependency is a one-line error naming its setting."""
    try:
        yield
    except (TimeoutError, OSError, psycopg.OperationalError, Unavailable, docker.errors.DockerException) as e:
        detail = getattr(e, "message", None) or str(e) or type(e).__name__
        raise ConfigError(f"cannot use {env_name(setting)}={url!r}: {detail.splitlines()[0]}") from None


async def warn_if_down(name: str, ping: Callable[[], Awaitable[None]]) -> None:
    """The broker and the cache may come up after us: /readyz says so until they do."""
    try:
        await ping()
    except Unavailable:
        log.warning("%s is not answering yet; /readyz reports it until it does", name)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Runs the role until SIGTERM/SIGINT (or until `stop` is set, for embedding and tests)."""
    plugins = plugin_loader.load(settings.plugins_dir)
    async with reachable("database_url", settings.database_url):
        await migrate(settings.database_url)
        db = Database(settings.database_url)
        await db.open()
    queue = Queue(settings.amqp_url, settings.queue)
    checks = {"postgresql": db.ping, "rabbitmq": queue.ping}
    closers = [queue.close, db.close]
    api_runner: web.AppRunner | None = None
    worker: Worker | None = None
    try:
        await warn_if_down("RabbitMQ", queue.ping)
        if settings.role in ("worker", "all"):
            async with reachable("docker_url", settings.docker_url or "local socket"):
                sandbox = make_sandbox(settings)
                await sandbox.call(sandbox.client.ping)
            closers.append(sandbox.close)
            checks["docker"] = lambda: sandbox.call(sandbox.client.ping)
            worker_id = Worker.new_id()
            executor = Executor(Tasks(db), sandbox, plugins, worker_id=worker_id, max_attempts=settings.max_attempts)
            worker = Worker(queue=queue, executor=executor, workers=Workers(db), sandbox=sandbox,
                            concurrency=settings.concurrency)
        if settings.role in ("api", "all"):
            sessions = Sessions(settings.redis_url, ttl=settings.session_ttl)
            closers.append(sessions.close)
            await warn_if_down("Redis", sessions.ping)
            checks["redis"] = sessions.ping
            accounts = Accounts(Users(db), sessions, max_failures=settings.login_max_failures,
                                failure_window=settings.login_failure_window)
            services = Services(accounts=accounts, tasks=TaskService(Tasks(db), queue, plugins), plugins=plugins, checks=checks)
            api_runner = web.AppRunner(make_app(services), shutdown_timeout=API_SHUTDOWN_S, access_log=None)
            await api_runner.setup()
            try:
                await web.TCPSite(api_runner, settings.host, settings.port).start()
            except OSError as e:
                raise ConfigError(f"cannot listen on {env_name('port')}={settings.port} ({settings.host}): {e.strerror}") from None
            log.info("API listening on http://%s:%d", settings.host, settings.port)

        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        worker_run = asyncio.create_task(worker.run()) if worker else None
        if worker:
            log.info("worker %s consuming %s with concurrency %d", worker.id, settings.queue, settings.concurrency)
        waiting = {asyncio.create_task(stop.wait())} | ({worker_run} if worker_run else set())
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping")
        if api_runner:
            await api_runner.cleanup()  # stops accepting, then lets requests in flight finish
            api_runner = None
        if worker and worker_run:
            worker.stop()
            await worker_run
            await worker.drain(WORKER_DRAIN_S)
    finally:
        if api_runner:
            await api_runner.cleanup()
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
