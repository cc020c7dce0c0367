"""HTTP handlers and the route table. Handlers parse, call a use case, and shape the answer."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import domain
from ..access import ACCOUNT, TASKS_READ, TASKS_WRITE, parse_key_request
from ..metrics import metrics_handler
from .docs import docs_page, openapi_json, playground_page
from .ws import websocket
from ..domain import Task
from ..errors import AppError, RequestTimeout
from .keys import SERVICES, SESSION_COOKIE, TOKEN, USER_ID

RESULT_RETRY_AFTER = "1"
BODY_TIMEOUT_S = 10  # a client that is slower than this to send its body loses its connection slot


async def read_json(request: web.Request) -> Any:
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            body = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {BODY_TIMEOUT_S} s.") from None
    return domain.parse_json(body)


async def register(request: web.Request) -> web.Response:
    credentials = domain.parse_credentials(await read_json(request))
    user = await request.app[SERVICES].accounts.register(credentials, request.remote or "")
    return web.json_response({"id": user.id, "username": user.username}, status=201)


async def login(request: web.Request) -> web.Response:
    credentials = domain.parse_credentials(await read_json(request))
    session = await request.app[SERVICES].accounts.login(credentials, request.remote or "")
    response = web.json_response({"token": session.token, "expires_in": session.expires_in})
    response.set_cookie(SESSION_COOKIE, session.token, max_age=session.expires_in, httponly=True, samesite="Lax", path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    await request.app[SERVICES].accounts.logout(request[TOKEN])
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def webhook_secret(request: web.Request) -> web.Response:
    """GET shows the secret that signs your webhooks; POST replaces it."""
    secret = await request.app[SERVICES].accounts.webhook_secret(request[USER_ID], rotate=request.method == "POST")
    return web.json_response({"secret": secret})


def key_document(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "name": row.name, "prefix": row.prefix, "scopes": list(row.scopes),
            "created_at": domain.iso(row.created_at), "last_used_at": domain.iso(row.last_used_at),
            "expires_at": domain.iso(row.expires_at)}


async def create_key(request: web.Request) -> web.Response:
    """The key itself is in this answer only."""
    key_request = parse_key_request(await read_json(request))
    row, key = await request.app[SERVICES].keys.create(request[USER_ID], key_request)
    return web.json_response({**key_document(row), "key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    rows = await request.app[SERVICES].keys.of_user(request[USER_ID])
    return web.json_response({"api_keys": [key_document(row) for row in rows]})


async def revoke_key(request: web.Request) -> web.Response:
    await request.app[SERVICES].keys.revoke(request.match_info["key_id"], request[USER_ID])
    return web.Response(status=204)


async def usage(request: web.Request) -> web.Response:
    days = domain.parse_days(request.query.get("days"))
    services = request.app[SERVICES]
    report = await services.tasks.usage_report(request[USER_ID], days)
    # What the user's paused sandboxes' persisted files take now (bounded by --sandbox-state-user-mb).
    return web.json_response({**report, "sandbox_state_bytes": await services.sandboxes.state_bytes(request[USER_ID])})


async def submit(request: web.Request) -> web.Response:
    wait_s = domain.parse_wait(request.query.get("wait"))
    task_request = domain.parse_task_request(await read_json(request))
    tasks = request.app[SERVICES].tasks
    task_id = await tasks.submit(request[USER_ID], task_request)
    body: dict[str, Any] = {"task_id": str(task_id)}
    if wait_s:
        task = await tasks.get(request[USER_ID], str(task_id), wait_s)
        if task.result is not None:
            body |= domain.result_document(task)
    return web.json_response(body, status=201, headers={"Location": f"/result/{task_id}"})


async def submit_many(request: web.Request) -> web.Response:
    """Each body is checked and submitted on its own: one that fails does not fail the others."""
    items = domain.parse_batch(await read_json(request))
    tasks = request.app[SERVICES].tasks
    answers: list[dict[str, Any]] = []
    for item in items:
        try:
            answers.append({"task_id": str(await tasks.submit(request[USER_ID], domain.parse_task_request(item)))})
        except AppError as e:
            answers.append({"error": e.code, "message": e.message})
    return web.json_response({"tasks": answers}, status=201)


async def list_tasks(request: web.Request) -> web.Response:
    """With ?ids=a,b,c those tasks' states and results; without, the caller's history, newest first."""
    tasks = request.app[SERVICES].tasks
    if "ids" in request.query:
        ids = domain.parse_ids(request.query["ids"])
        found = await tasks.get_many(request[USER_ID], ids)
        return web.json_response({"tasks": [{"task_id": i, **_state_or_result(t)} for i, t in zip(ids, found, strict=True)]})
    query = domain.parse_history_query(dict(request.query))
    rows = await tasks.history(request[USER_ID], query)
    last = rows[-1] if len(rows) == query.limit else None
    return web.json_response({
        "tasks": [{"task_id": str(row["id"]), "status": domain.TaskState(row["state"]).public, "state": row["state"],
                   "language": row["language"], "verdict": row["verdict"], "created_at": domain.iso(row["created_at"]),
                   "started_at": domain.iso(row["started_at"]), "finished_at": domain.iso(row["finished_at"])} for row in rows],
        "next_cursor": domain.history_cursor(last["created_at"], last["id"]) if last else None,
    })


def _state_or_result(task: Task | AppError) -> dict[str, Any]:
    if isinstance(task, AppError):
        return {"error": task.code, "message": task.message}
    return domain.result_document(task) if task.result else {"status": task.state.public}


async def cancel(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    if await request.app[SERVICES].tasks.cancel(request[USER_ID], task_id):
        return web.json_response({"task_id": task_id, "status": "ready", "verdict": "cancelled"})
    return web.json_response({"task_id": task_id, "status": "in_progress", "cancelling": True}, status=202)


async def status(request: web.Request) -> web.Response:
    state = await request.app[SERVICES].tasks.state(request[USER_ID], request.match_info["task_id"])
    return web.json_response({"status": state.public})


async def result(request: web.Request) -> web.Response:
    wait_s = domain.parse_wait(request.query.get("wait"))
    task = await request.app[SERVICES].tasks.get(request[USER_ID], request.match_info["task_id"], wait_s)
    if task.result is None:
        return web.json_response({"status": task.state.public}, status=202, headers={"Retry-After": RESULT_RETRY_AFTER})
    return web.json_response(domain.result_document(task))


async def languages(request: web.Request) -> web.Response:
    return web.json_response({"languages": [p.describe() for p in request.app[SERVICES].plugins.all]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    return await readiness(request.app[SERVICES].checks)


async def readiness(checks: dict[str, Any]) -> web.Response:
    """/readyz of the API, and of a worker without it (on its metrics port): every check, and 503 naming those failing."""
    outcomes = await asyncio.gather(*(_check(fn) for fn in checks.values()))
    report = dict(zip(checks, outcomes, strict=True))
    failing = [name for name, outcome in report.items() if outcome != "ok"]
    if failing:
        return web.json_response(
            {"error": "unavailable", "message": f"Not ready: {'; '.join(f'{name} {report[name]}' for name in failing)}.",
             "checks": report},
            status=503,
        )
    return web.json_response({"status": "ready", "checks": report})


async def _check(fn: Any) -> str:
    try:
        await asyncio.wait_for(fn(), 5)
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure means not ready, and says which
        return f"failing: {getattr(e, 'message', None) or type(e).__name__}"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Any
    scope: str | None = None  # the scope a caller needs; None: the route is public

    @property
    def protected(self) -> bool:
        return self.scope is not None


W, R, A = TASKS_WRITE, TASKS_READ, ACCOUNT


ROUTES = [
    Route("POST", "/register", register),
    Route("POST", "/login", login),
    Route("POST", "/logout", logout, scope=A),
    Route("GET", "/account/webhook-secret", webhook_secret, scope=A),
    Route("POST", "/account/webhook-secret", webhook_secret, scope=A),
    Route("POST", "/account/api-keys", create_key, scope=A),
    Route("GET", "/account/api-keys", list_keys, scope=A),
    Route("DELETE", "/account/api-keys/{key_id}", revoke_key, scope=A),
    Route("GET", "/account/usage", usage, scope=R),
    Route("POST", "/task", submit, scope=W),
    Route("POST", "/tasks", submit_many, scope=W),
    Route("GET", "/tasks", list_tasks, scope=R),
    Route("POST", "/task/{task_id}/cancel", cancel, scope=W),
    Route("GET", "/status/{task_id}", status, scope=R),
    Route("GET", "/result/{task_id}", result, scope=R),
    Route("GET", "/languages", languages),
    Route("GET", "/ws", websocket, scope=W),
    Route("GET", "/", playground_page),
    Route("GET", "/healthz", healthz),
    Route("GET", "/readyz", readyz),
    Route("GET", "/metrics", metrics_handler),
    Route("GET", "/openapi.json", openapi_json),
    Route("GET", "/docs", docs_page),
]
