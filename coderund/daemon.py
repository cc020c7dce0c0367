"""Wiring: open what a role needs, serve until SIGTERM, drain, close."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import docker
from docker.transport.unixconn import UnixHTTPAdapter
import psycopg
from aiohttp import web

from . import metrics
from . import plugins as plugin_loader
from .api.app import make_app
from .api.routes import readiness
from .compat import judge0
from .api.keys import Services
from .addresses import parse_networks
from .admission import Ceiling
from .api.server import Runner
from .config import ConfigError, Settings, env_name
from .domain import MAX_STORED_FILE_BYTES
from .errors import Unavailable
from .repository.db import Database, migrate
from .repository.callbacks import Callbacks
from .repository.notify import CANCEL, FINISHED, TaskListener
from .repository.outbox import Outbox
from .repository.queue import Queue
from .repository.rates import Rates
from .repository.live import LiveChannel
from .repository.sessions import Sessions, connect
from .repository.stored_files import StoredFiles
from .repository.tasks import Tasks
from .repository.keys import REVOKED, Keys
from .repository.usage import Usage
from .repository.users import Users
from .repository.workers import Workers
from .sandbox import supervisor
from .sandbox.compile_cache import CompileCache
from .sandbox.egress import Egress, Rules
from .sandbox.engine import Engine
from .sandbox.gate import FairGate
from .sandbox.options import LABEL, Isolation
from .sandbox.pool import WarmPool
from .sandbox.runner import Sandbox
from .repository.sandbox_channel import SandboxChannel
from .repository.sandboxes import SandboxStore
from .sandbox.stateful import Hub, Spec
from .sandbox_requests import LANGUAGES, SandboxLimits, StateLimits
from .usecases import Admission, ApiKeys, Accounts, Executor, FileStore, LiveRuns, Sandboxes, SandboxHost, TaskService, Webhooks
from .usecases.execution import missing_image_note
from .worker import Worker

log = logging.getLogger(__name__)
API_SHUTDOWN_S = 10  # for requests in flight when SIGTERM comes
WORKER_DRAIN_S = 60  # for tasks in flight; past that they go back to the queue
MB = 1024 * 1024
DOCKER_TIMEOUT_S = 120
FILL_PARALLEL = 6  # warm containers being made at once: with the cold starts, enough to keep the engine busy


def docker_client(settings: Settings, pool: int = 10) -> docker.DockerClient:
    if settings.docker_url:
        client = docker.DockerClient(base_url=settings.docker_url, timeout=DOCKER_TIMEOUT_S, max_pool_size=pool)
    else:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_S, max_pool_size=pool)
    api = client.api
    api.trust_env = False  # no proxy, netrc or CA bundle of the environment is looked up at every call
    adapter = api.get_adapter(api.base_url)
    if isinstance(adapter, UnixHTTPAdapter):
        # It keys its connection pools by the whole URL: each container's calls would open, and soon
        # close, connections of their own. One pool serves every call instead.
        adapter.get_connection_with_tls_context = lambda request, verify, proxies=None, cert=None: \
            adapter.get_connection(api.base_url, proxies)
    return client


def make_sandbox(settings: Settings, worker_id: str, deployment: str) -> Sandbox:
    # Engine calls at once: a cold start per running task, the pool's fills, and room for cleanup.
    threads = settings.concurrency + FILL_PARALLEL + 4
    client = docker_client(settings, pool=threads)
    isolation = Isolation(runtime=settings.runtime, tmpfs_mb=settings.tmpfs_mb, pids_limit=settings.pids_limit)
    engine = Engine(client, isolation=isolation, supervisor_binary=supervisor.build(Path(settings.cache_dir)),
                    threads=threads, worker_id=worker_id, deployment=deployment)
    pool = WarmPool(lambda shape: engine.make(shape, {f"{LABEL}.warm": "1"}), engine.discard,
                    max_total=settings.warm_max, per_shape=2 * settings.concurrency + 2, max_age_s=settings.warm_max_age_s,
                    idle_s=settings.warm_idle_s, fill_parallel=FILL_PARALLEL)
    cache = CompileCache(Path(settings.cache_dir) / "builds", settings.compile_cache_mb * 1024 * 1024)
    return Sandbox(engine, pool, cache, FairGate(settings.concurrency), output_limit=settings.output_limit,
                   egress=egress(settings))


def egress(s: Settings) -> Egress | None:
    """The worker's egress proxy, when egress is on; its sockets live in the cache folder, which the
    engine must see as the worker does (a bind mount's source is a path on the engine's host)."""
    if s.egress_widest is None:
        return None
    rules = Rules(widest=s.egress_widest, resolve=s.egress_resolve, hosts=s.egress_host_table,
                  allow_private=parse_networks(s.egress_allow_private), max_bytes=s.egress_max_mb * 1024 * 1024,
                  max_connections=s.egress_max_connections, ports=s.egress_port_set)
    return Egress(rules, Path(s.cache_dir).resolve() / "egress")


def warm_sandboxes(settings: Settings, engine: Engine, plugins: plugin_loader.Plugins) -> WarmPool:
    """Stateful sandboxes of the default spec, started ahead: a create then costs no container start."""
    pool = WarmPool(lambda spec: Hub.start(engine, spec, {f"{LABEL}.warm": "1"}), lambda hub: engine.discard(hub.box),
                    max_total=settings.warm_sandboxes, per_shape=settings.warm_sandboxes, max_age_s=settings.warm_max_age_s,
                    idle_s=settings.warm_idle_s, fill_parallel=1)
    limits = sandbox_limits(settings)
    for language in LANGUAGES:
        if plugins.has(language):  # a deployment may leave a sandbox language out
            pool.serve(Spec(plugins.get(language).image, limits.memory_mb, limits.cpus, limits.disk_mb))
    return pool


def images_check(engine: Engine, plugins: plugin_loader.Plugins) -> Callable[[], Awaitable[None]]:
    """For /readyz: every plugin's image is on the engine; else Unavailable naming those missing."""
    async def check() -> None:
        if missing := await missing_images(engine, plugins):
            raise Unavailable("; ".join(missing) + ".")
    return check


async def missing_images(engine: Engine, plugins: plugin_loader.Plugins) -> list[str]:
    """What is missing, a sentence each: the image, its language, and the command that builds it."""
    absent = set(await engine.call(engine.missing_images, [p.image for p in plugins.all]))
    return [missing_image_note(p.image, p.name) for p in plugins.all if p.image in absent]


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


async def listen(stack: contextlib.AsyncExitStack, app: web.Application, settings: Settings, port_setting: str) -> None:
    """Serves app until the stack unwinds; cleanup stops accepting, then lets requests in flight finish."""
    port = getattr(settings, port_setting)
    runner = Runner(app, shutdown_timeout=API_SHUTDOWN_S, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, settings.host, port).start()
    except OSError as e:
        raise ConfigError(f"cannot listen on {env_name(port_setting)}={port} ({settings.host}): {e.strerror}") from None
    for host, bound, *_ in runner.addresses:  # port 0 means the system chose it: say which
        log.info("listening on http://%s:%d%s", host, bound, "" if port_setting == "port" else "/metrics")


async def start_worker(
    settings: Settings, db: Database, queue: Queue, plugins: plugin_loader.Plugins, stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
) -> Worker:
    worker_id = Worker.new_id()
    workers = Workers(db)
    deployment = await workers.deployment()
    async with reachable("docker_url", settings.docker_url or "local socket"):
        sandbox = make_sandbox(settings, worker_id, deployment)
        await sandbox.engine.call(sandbox.engine.client.ping)
    stack.push_async_callback(sandbox.engine.close)
    for note in await missing_images(sandbox.engine, plugins):
        log.warning("%s; its tasks end as internal_error until then", note)
    sandbox.serve(plugins.all)
    refill = asyncio.create_task(sandbox.pool.run())

    async def close_pool() -> None:
        refill.cancel()
        await sandbox.pool.close()

    stack.push_async_callback(close_pool)
    cancels = TaskListener(settings.database_url, CANCEL)
    cancels.start()
    stack.push_async_callback(cancels.close)
    redis = connect(settings.redis_url)  # live runs' output and stdin
    stack.push_async_callback(redis.aclose)
    live = LiveChannel(redis)
    await warn_if_down("Redis", live.ping)
    executor = Executor(Tasks(db, settings.queue), sandbox, plugins, cancels, live, worker_id=worker_id,
                        max_attempts=settings.max_attempts, case_parallel=settings.concurrency)
    host = SandboxHost(SandboxStore(db), SandboxChannel(redis), sandbox.engine, plugins, Usage(db), worker_id=worker_id,
                       queue=settings.queue, max_sandboxes=settings.worker_max_sandboxes,
                       pool=warm_sandboxes(settings, sandbox.engine, plugins), cpu_s_per_day=settings.user_cpu_s_per_day,
                       egress=sandbox.egress,
                       state=StateLimits(settings.sandbox_state_max_mb * MB, settings.sandbox_state_user_mb * MB))
    worker = Worker(queue=queue, executor=executor, workers=workers, sandbox=sandbox, concurrency=settings.concurrency,
                    retention_days=settings.retention_days, host=host)
    running = asyncio.create_task(worker.run())
    # A worker loop that dies stops the process, so that a supervisor restarts it.
    running.add_done_callback(lambda task: task.cancelled() or task.exception() is None or stop.set())

    async def drain() -> None:
        worker.stop()
        await running
        await worker.drain(WORKER_DRAIN_S)

    stack.push_async_callback(drain)
    log.info("worker %s consuming %s with concurrency %d", worker.id, settings.queue, settings.concurrency)
    return worker


async def start_webhooks(settings: Settings, db: Database, plugins: plugin_loader.Plugins,
                         stack: contextlib.AsyncExitStack) -> None:
    """API processes send the webhooks of finished tasks (from the outbox; several share it)."""
    callbacks = Callbacks(allow_private=settings.webhook_allow_private)
    stack.push_async_callback(callbacks.close)
    webhooks = Webhooks(Outbox(db), Tasks(db), Users(db), callbacks, plugins, backoff_s=settings.webhook_backoff_s)
    sending = asyncio.create_task(webhooks.run())
    stack.callback(sending.cancel)


def sandbox_limits(s: Settings) -> SandboxLimits:
    return SandboxLimits(memory_mb=s.sandbox_memory_mb, max_memory_mb=s.sandbox_max_memory_mb,
                         cpus=min(1.0, s.sandbox_max_cpus), max_cpus=s.sandbox_max_cpus, disk_mb=s.sandbox_disk_mb,
                         max_disk_mb=s.sandbox_max_disk_mb, lifetime_s=min(3600, s.sandbox_max_lifetime_s),
                         max_lifetime_s=s.sandbox_max_lifetime_s,
                         idle_timeout_s=min(SandboxLimits.idle_timeout_s, s.sandbox_max_lifetime_s))


def ceiling(s: Settings) -> Ceiling:
    return Ceiling(pids_limit=s.pids_limit, disk_mb=s.tmpfs_mb, max_case_ms=s.max_case_seconds * 1000,
                   network=s.egress_widest)


def make_services(settings: Settings, db: Database, queue: Queue, plugins: plugin_loader.Plugins, sessions: Sessions,
                  finished: TaskListener, revocations: TaskListener) -> Services:
    api_keys = ApiKeys(Keys(db), revocations)
    accounts = Accounts(Users(db), sessions, api_keys, Rates(sessions.redis, settings.login_per_address, "hashes"),
                        max_failures=settings.login_max_failures,
                        failure_window=settings.login_failure_window, registration_open=settings.registration == "open")
    admission = Admission(plugins, Rates(sessions.redis, settings.user_rate), Usage(db), ceiling(settings),
                          cpu_s_per_day=settings.user_cpu_s_per_day, allow_private_callbacks=settings.webhook_allow_private)
    tasks = TaskService(Tasks(db, settings.queue), queue, admission, finished, max_queue=settings.max_queue,
                        user_max_pending=settings.user_max_pending)
    files = FileStore(StoredFiles(db, max_bytes_per_owner=settings.stored_files_mb * 1024 * 1024),
                      max_file_bytes=MAX_STORED_FILE_BYTES)
    sandboxes = Sandboxes(SandboxStore(db), SandboxChannel(sessions.redis), admission, queue=settings.queue,
                          cap=settings.sandbox_max_per_user, limits=sandbox_limits(settings))
    return Services(accounts=accounts, tasks=tasks, plugins=plugins, keys=api_keys, files=files,
                    live=LiveRuns(tasks, LiveChannel(sessions.redis), finished), sandboxes=sandboxes)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Runs the role until SIGTERM/SIGINT (or until `stop` is set, for embedding and tests)."""
    plugins = plugin_loader.load(settings.plugins_dir)
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        async with reachable("database_url", settings.database_url):
            await migrate(settings.database_url)
            db = Database(settings.database_url)
            await db.open()
        stack.push_async_callback(db.close)
        queue = Queue(settings.amqp_url, settings.queue)
        stack.push_async_callback(queue.close)
        await warn_if_down("RabbitMQ", queue.ping)
        sampler = asyncio.create_task(metrics.sample_queue_depth(queue.depth))
        stack.callback(sampler.cancel)
        checks: dict[str, Callable[[], Awaitable[None]]] = {"postgresql": db.ping, "rabbitmq": queue.ping}

        if settings.role in ("worker", "all"):
            worker = await start_worker(settings, db, queue, plugins, stack, stop)
            checks["docker"] = lambda: worker.sandbox.engine.call(worker.sandbox.engine.client.ping)
            checks["images"] = images_check(worker.sandbox.engine, plugins)
            checks["redis"] = worker.executor.live.ping
        if settings.role in ("api", "all"):
            sessions = Sessions(settings.redis_url, ttl=settings.session_ttl)
            stack.push_async_callback(sessions.close)
            listening = asyncio.create_task(sessions.listen())
            stack.callback(listening.cancel)
            await warn_if_down("Redis", sessions.ping)
            checks["redis"] = sessions.ping
            finished = TaskListener(settings.database_url, FINISHED)
            finished.start()
            stack.push_async_callback(finished.close)
            revocations = TaskListener(settings.database_url, REVOKED)
            revocations.start()
            stack.push_async_callback(revocations.close)
            services = make_services(settings, db, queue, plugins, sessions, finished, revocations)
            services.checks = checks
            judge0_limits = judge0.Limits(max_submission_batch_size=settings.judge0_batch_max,
                                          allow_enable_network=settings.egress == "on")
            await listen(stack, make_app(services, judge0_limits, settings.jobe_queue_wait_s,
                                            settings.judge0_anonymous_user, settings.e2b_domain),
                         settings, "port")
            await start_webhooks(settings, db, plugins, stack)  # once serving: a start that fails leaves nothing half-done
        else:
            async def readyz(request: web.Request) -> web.Response:
                return await readiness(checks)

            worker_app = metrics.metrics_app()
            worker_app.router.add_get("/readyz", readyz)  # its own readiness, the API's being elsewhere
            await listen(stack, worker_app, settings, "metrics_port")

        await stop.wait()
        log.info("stopping: the API closes first, then running tasks drain")
