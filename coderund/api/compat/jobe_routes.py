"""Jobe's REST API under /jobe/index.php/restapi (Moodle CodeRunner's sandbox): thin handlers over the
use cases and the pure translation in coderund/compat/jobe.py. Errors are JSON strings, as Jobe's."""
from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable

from aiohttp import web

from ... import domain
from ...compat import jobe
from ...domain import MAX_WAIT_S, TaskState
from ...errors import AppError, QueueFull
from ..keys import SERVICES, USER_ID
from ..middlewares import credential, foreign, request_token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/jobe/index.php/restapi"
QUEUE_WAIT_S = 10  # as Jobe's jobe_wait_timeout: a run that finds no room this long is an overload (21)
QUEUE_WAIT = web.AppKey("jobe_queue_wait_s", float)
RUN_WAITS = 10  # of MAX_WAIT_S each, once it runs: a run holds its connection at most this long
FILE_ID = "{file_id:[A-Za-z0-9]+}"  # Jobe's (:alphanum)


def _message(message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(message, status=status, headers=headers)


@web.middleware
async def jobe_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The key in X-API-KEY (or as a Bearer token); Jobe's 403s without a valid one."""
    given = request.headers.get("X-API-KEY")
    token = credential(given) if given is not None else request_token(request)
    return await foreign(request, handler, token, _message,
                         lambda: _message("Unknown API key" if token else "Missing API key", 403))


async def languages(request: web.Request) -> web.Response:
    return web.json_response(jobe.languages(request.app[SERVICES].plugins))


async def runs(request: web.Request) -> web.Response:
    """Synchronous, as Jobe is: the answer is the finished run. A run that finds no room (the queue
    full, or still queued after the queue wait, 10 s by default) is Jobe's overload outcome, 21, with HTTP 200."""
    services, user_id = request.app[SERVICES], request[USER_ID]
    try:
        body = domain.parse_json(await request.read())
    except AppError:
        return _message("Non-JSON post data received", 400)
    try:
        spec = jobe.parse_run(body, services.plugins)
        files = await services.files.take(user_id, [file_id for file_id, _ in spec.file_list]) if spec.file_list else {}
        if files is None:
            raise jobe.JobeError(404, "One or more of the specified files is missing/unavailable")
        if spec.sourcecode == jobe.OVERLOAD_PROBE:
            return web.json_response(jobe.overload())
        parsed = jobe.task_request(spec, services.plugins, files)
    except jobe.JobeError as e:
        return _message(e.message, e.status)
    try:
        task_id = str(await services.tasks.submit(user_id, parsed))
    except QueueFull:
        return web.json_response(jobe.overload())
    task = await services.tasks.get(user_id, task_id, request.app[QUEUE_WAIT])
    if task.state is TaskState.QUEUED and await services.tasks.withdraw(user_id, task_id):
        return web.json_response(jobe.overload())
    for _ in range(RUN_WAITS):
        if task.state is TaskState.DONE:
            return web.json_response(jobe.result(task))
        task = await services.tasks.get(user_id, task_id, MAX_WAIT_S)
    return _message(f"The run did not finish in time; its result will be at GET /result/{task_id}.", 503)


async def put_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    try:
        body = domain.parse_json(await request.read())
    except AppError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("file_contents"), str):
        return _message("put: missing file_contents parameter", 400)
    try:
        contents = base64.b64decode(body["file_contents"], validate=True)
    except (binascii.Error, ValueError):
        return _message(f"put: contents of file {file_id} are not valid base-64", 400)
    await request.app[SERVICES].files.put(request[USER_ID], file_id, contents)
    return web.Response(status=204)


async def head_file(request: web.Request) -> web.Response:
    found = await request.app[SERVICES].files.exists(request[USER_ID], request.match_info["file_id"])
    return web.Response(status=204 if found else 404)


# Jobe's routes, each with and without a trailing slash (CodeRunner and testsubmit.py use both).
ROUTES = [(method, path + slash, handler) for slash in ("", "/") for method, path, handler in (
    ("GET", "/languages", languages), ("POST", "/runs", runs),
    ("PUT", "/files/{file_id}", put_file), ("HEAD", "/files/{file_id}", head_file))]


def make_app(services: object, queue_wait_s: float = QUEUE_WAIT_S) -> web.Application:
    app = web.Application(middlewares=[jobe_api])
    app[SERVICES] = services
    app[QUEUE_WAIT] = queue_wait_s
    for method, path, handler in ROUTES:
        app.router.add_route(method, path.replace("{file_id}", FILE_ID), handler)
    return app
