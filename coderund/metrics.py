"""Prometheus metrics: names, buckets and the few helpers that record them."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from . import __version__

log = logging.getLogger(__name__)

# From a cached HTTP answer (ms) to a task that waited in a queue and then ran for its limit (tens of s).
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
QUEUE_DEPTH_EVERY_S = 5

BUILD_INFO = Gauge("coderund_build_info", "coderund version", ["version"])
HTTP_REQUESTS = Counter("coderund_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("coderund_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                         buckets=SECONDS)
LOGINS = Counter("coderund_logins_total", "Login attempts by outcome", ["outcome"])
TASKS_SUBMITTED = Counter("coderund_tasks_submitted_total", "Tasks accepted by the API", ["language"])
TASKS_FINISHED = Counter("coderund_tasks_finished_total", "Tasks finished by workers", ["language", "verdict"])
TASK_CPU = Counter("coderund_task_cpu_seconds_total", "CPU seconds used by finished tasks", ["language"])
QUEUE_WAIT = Histogram("coderund_task_queue_wait_seconds", "From submission to a worker starting the task",
                       ["language"], buckets=SECONDS)
COMPILE_TIME = Histogram("coderund_task_compile_seconds", "Wall time of compile steps", ["language"], buckets=SECONDS)
RUN_TIME = Histogram("coderund_task_run_seconds", "Wall time of program runs", ["language"], buckets=SECONDS)
CONTAINER_START = Histogram("coderund_sandbox_container_start_seconds", "Creating, starting and attaching to a sandbox container",
                            buckets=SECONDS)
EGRESS_CONNECTIONS = Counter("coderund_egress_connections_total", "Connections asked of the egress proxy, by outcome"
                             " (allowed, refused)", ["outcome"])
EGRESS_BYTES = Counter("coderund_egress_bytes_total", "Bytes through the egress proxy, by direction (out: from sandboxes)",
                       ["direction"])
DOCKER_CALLS = Counter("coderund_docker_api_calls_total", "Docker engine API calls by route", ["call"])
WARM_TAKES = Counter("coderund_warm_pool_takes_total", "Steps by where their container came from: warm (hit), made now for a warm shape (miss) or another (cold)",
                     ["outcome"])
WARM_READY = Gauge("coderund_warm_pool_ready", "Warm containers ready for a task")
COMPILE_CACHE = Counter("coderund_compile_cache_total", "Compile cache lookups by outcome (hit, miss, corrupt)",
                        ["language", "outcome"])
COMPILE_CACHE_EVICTIONS = Counter("coderund_compile_cache_evictions_total", "Compile cache entries evicted")
WEBHOOKS = Counter("coderund_webhook_deliveries_total", "Webhook delivery attempts by outcome (delivered, retry, gave_up)",
                   ["outcome"])
WEBHOOK_OLDEST = Gauge("coderund_webhook_oldest_pending_seconds", "Age of the oldest webhook not delivered yet")
COMPILE_CACHE_BYTES = Gauge("coderund_compile_cache_bytes", "Size of the compile cache on disk")
IN_FLIGHT = Gauge("coderund_worker_tasks_in_flight", "Tasks a worker is running now")
CONCURRENCY = Gauge("coderund_worker_concurrency", "Tasks a worker may run at once")
QUEUE_DEPTH = Gauge("coderund_queue_depth", "Tasks waiting in the RabbitMQ queue (sampled)")

BUILD_INFO.labels(__version__).set(1)


def exposition() -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def metrics_handler(request: web.Request) -> web.Response:
    return exposition()


@web.middleware
async def http_metrics(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Labels by route template, never the raw path: ids would explode the series."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()


async def sample_queue_depth(depth: Callable[[], Awaitable[int]]) -> None:
    """Passive declares every few seconds, not per request."""
    while True:
        try:
            QUEUE_DEPTH.set(await depth())
        except Exception as e:  # noqa: BLE001 - the broker may be down; readiness reports that
            log.debug("queue depth unavailable: %s", e)
        await asyncio.sleep(QUEUE_DEPTH_EVERY_S)


def metrics_app() -> web.Application:
    """The worker's own endpoint (--metrics-port), for a worker without the API."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    return app
