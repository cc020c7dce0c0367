"""Judge0 CE's routes under /judge0: thin handlers over the use cases and the pure translation in
judge0.py. Errors are Judge0's: {"error": ...} or 422 {field: [messages]}, 401 with an empty body."""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ... import domain
from ...access import TASKS_READ, TASKS_WRITE
from ...domain import MAX_WAIT_S, Task
from ...errors import AppError, Conflict, NotFound, PayloadTooLarge, QueueFull, RateLimited, Unauthorized, ValidationFailed
from ..keys import SERVICES, USER_ID
from ..middlewares import authorize, credential, request_token
from ..routes import read_json
from ...compat import judge0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LIMITS = web.AppKey("judge0_limits", judge0.Limits)
ANONYMOUS = web.AppKey("judge0_anonymous_user", str)  # the user keyless requests act as; "": none may
TOKEN_HEADER = "X-Auth-Token"
KEY_HEADERS = (TOKEN_HEADER, "X-RapidAPI-Key", "X-Apihub-Key")
PER_PAGE = 20
MAX_PAGE = 1 << 40


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Judge0Error(Exception):
    """Answered as Judge0 does: {"error": message} (any text: it never goes into a header)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@web.middleware
async def judge0_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Judge0's authentication (X-Auth-Token, as a header or a query parameter, or a Bearer token) and errors."""
    # Judge0's own header (or query parameter), and the key headers of the hosted Judge0s
    # (RapidAPI, AllThingsDev), so that the SDK's hosted clients work pointed here with a coderund key.
    given = next((request.headers[h] for h in KEY_HEADERS if h in request.headers), None) or request.query.get(TOKEN_HEADER)
    token = (credential(given) if given else None) or request_token(request)
    try:
        if token is None and request.app[ANONYMOUS]:  # as Judge0 CE by default: no credential needed
            request[USER_ID] = (await request.app[SERVICES].accounts.named(request.app[ANONYMOUS])).user_id
        else:
            await authorize(request, token, TASKS_READ if request.method in ("GET", "HEAD") else TASKS_WRITE)
        return await handler(request)
    except Unauthorized:
        return web.Response(status=401)
    except judge0.NotUtf8:
        return _error(NOT_UTF8, 400)
    except Judge0Error as e:
        return _error(e.message, e.status)
    except QueueFull:
        return _error("queue is full", 503)
    except NotFound:
        return _error("not found", 404)
    except RateLimited as e:
        return web.json_response({"error": e.message}, status=429, headers=e.headers)
    except ValidationFailed as e:
        return web.json_response({"submission": [e.message]}, status=422)
    except AppError as e:
        return _error(e.message, e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.reason.lower(), e.status)


NOT_UTF8 = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) == "true"


def _fields(request: web.Request) -> tuple[str, ...]:
    fields = judge0.parse_fields(request.query.get("fields"))
    if isinstance(fields, str):
        raise Judge0Error(fields)
    return fields


async def _body(request: web.Request) -> Any:
    try:
        return await read_json(request)
    except AppError as e:
        raise Judge0Error(e.message) from None


def _render(request: web.Request, task: Task, fields: tuple[str, ...]) -> dict[str, Any]:
    return judge0.document(task, request.app[SERVICES].plugins, fields, base64_encoded=_flag(request, "base64_encoded"))


async def _submit(request: web.Request, body: Any) -> str | dict[str, list[str]]:
    """The token of the submitted task, or Judge0's 422 errors."""
    services = request.app[SERVICES]
    parsed = judge0.parse_submission(body, services.plugins, request.app[LIMITS],
                                     base64_encoded=_flag(request, "base64_encoded"))
    if isinstance(parsed, dict):
        return parsed
    parsed = judge0.fit_limits(parsed, services.plugins.get(parsed.language))
    try:
        return str(await services.tasks.submit(request[USER_ID], parsed))
    except (ValidationFailed, PayloadTooLarge) as e:  # the admission step's refusals are Judge0's 422s
        field = "callback_url" if "callback_url" in e.message else "submission"
        return {field: [e.message]}


async def create(request: web.Request) -> web.Response:
    fields = _fields(request)
    token = await _submit(request, await _body(request))
    if isinstance(token, dict):
        return web.json_response(token, status=422)
    if not _flag(request, "wait"):
        return web.json_response({"token": token}, status=201)
    task = await request.app[SERVICES].tasks.get(request[USER_ID], token, MAX_WAIT_S)
    try:
        return web.json_response(_render(request, task, fields), status=201)
    except judge0.NotUtf8:
        return web.json_response({"error": NOT_UTF8, "token": token}, status=201)


async def show(request: web.Request) -> web.Response:
    fields = _fields(request)  # checked first, as Judge0 does
    task = await request.app[SERVICES].tasks.get(request[USER_ID], request.match_info["token"])
    return web.json_response(_render(request, task, fields))


async def index(request: web.Request) -> web.Response:
    fields = _fields(request)
    try:
        page, per_page = int(request.query.get("page", "1")), int(request.query.get("per_page", str(PER_PAGE)))
    except ValueError:
        return _error("invalid page or per_page", 400)
    if not 0 < page <= MAX_PAGE:  # past it, the offset would overflow the database's
        return _error(f"invalid page: {page}", 400)
    if per_page < 0:
        return _error(f"invalid per_page: {per_page}", 400)
    per_page = min(per_page, domain.MAX_BATCH)
    tasks, total = await request.app[SERVICES].tasks.page(request[USER_ID], page, per_page)
    pages = -(-total // per_page) if per_page else 0
    return web.json_response({"submissions": [_render(request, t, fields) for t in tasks], "meta": {
        "current_page": page, "next_page": page + 1 if page < pages else None, "prev_page": page - 1 if page > 1 else None,
        "total_pages": pages, "total_count": total}})


async def destroy(request: web.Request) -> web.Response:
    try:
        task = await request.app[SERVICES].tasks.delete(request[USER_ID], request.match_info["token"])
    except Conflict:
        status_id = judge0.status(await request.app[SERVICES].tasks.get(request[USER_ID], request.match_info["token"]))
        return _error(f"submission cannot be deleted because its status is {status_id} ({judge0.STATUSES[status_id]})", 400)
    # As Judge0 does: base64 whatever was asked, so the answer always carries the data.
    return web.json_response(judge0.document(task, request.app[SERVICES].plugins, _fields(request), base64_encoded=True))


def _batch_size(request: web.Request, count: int) -> web.Response | None:
    most = request.app[LIMITS].max_submission_batch_size
    if count > most:
        return _error(f"number of submissions in a batch should be less than or equal to {most}", 400)
    if count == 0:
        return _error("there should be at least one submission in a batch", 400)
    return None


async def batch_create(request: web.Request) -> web.Response:
    body = await _body(request)
    items = body.get("submissions") if isinstance(body, dict) else None
    items = items if isinstance(items, list) else []
    if (refused := _batch_size(request, len(items))) is not None:
        return refused
    answers = []
    for item in items:
        token = await _submit(request, item)
        answers.append(token if isinstance(token, dict) else {"token": token})
    any_valid = any("token" in answer for answer in answers)
    return web.json_response(answers, status=201 if any_valid else 422)


async def batch_show(request: web.Request) -> web.Response:
    fields = _fields(request)
    tokens = [t for t in (request.headers.get("tokens") or request.query.get("tokens", "")).strip().split(",") if t]
    if (refused := _batch_size(request, len(tokens))) is not None:
        return refused
    found = await request.app[SERVICES].tasks.get_many(request[USER_ID], tokens, whole=True)
    return web.json_response({"submissions": [None if isinstance(t, AppError) else _render(request, t, fields) for t in found]})


async def languages(request: web.Request) -> web.Response:
    return web.json_response(judge0.languages(request.app[SERVICES].plugins))


async def all_languages(request: web.Request) -> web.Response:
    return web.json_response([{**lang, "is_archived": False} for lang in judge0.languages(request.app[SERVICES].plugins)])


async def language(request: web.Request) -> web.Response:
    try:
        found = judge0.language(request.app[SERVICES].plugins, int(request.match_info["language_id"]))
    except ValueError:
        found = None
    return web.json_response(found) if found else _error("not found", 404)


async def statuses(request: web.Request) -> web.Response:
    return web.json_response([{"id": i, "description": d} for i, d in judge0.STATUSES.items()])


async def about(request: web.Request) -> web.Response:
    return web.json_response({"version": judge0.VERSION, "homepage": "coderund (Judge0 CE compatible API)",
                              "source_code": None, "maintainer": "coderund"})


async def version(request: web.Request) -> web.Response:
    return web.Response(text=judge0.VERSION)


async def config_info(request: web.Request) -> web.Response:
    tasks = request.app[SERVICES].tasks
    return web.json_response(judge0.config_info(request.app[LIMITS], max_queue=tasks.max_queue))


async def system_info(request: web.Request) -> web.Response:
    return web.json_response({"Architecture": os.uname().machine, "CPU(s)": str(os.cpu_count()), "Model name": "coderund"})


async def workers(request: web.Request) -> web.Response:
    depth = await request.app[SERVICES].tasks.queue_depth()
    return web.json_response([{"queue": "coderund", "size": depth, "available": None, "idle": None, "working": None,
                               "paused": 0, "failed": 0}])


ROUTES = [
    ("POST", "/submissions", create), ("GET", "/submissions", index),
    ("POST", "/submissions/batch", batch_create), ("GET", "/submissions/batch", batch_show),
    ("GET", "/submissions/{token}", show), ("DELETE", "/submissions/{token}", destroy),
    ("GET", "/languages", languages), ("GET", "/languages/all", all_languages), ("GET", "/languages/{language_id}", language),
    ("GET", "/statuses", statuses), ("GET", "/about", about), ("GET", "/version", version),
    ("GET", "/config_info", config_info), ("GET", "/system_info", system_info), ("GET", "/workers", workers),
]


def make_app(services: Any, limits: judge0.Limits, anonymous_user: str = "") -> web.Application:
    app = web.Application(middlewares=[judge0_api])
    app[SERVICES] = services
    app[LIMITS] = limits
    app[ANONYMOUS] = anonymous_user
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
