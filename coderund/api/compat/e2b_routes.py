"""E2B's API under /e2b, so that E2B's SDKs work unchanged with E2B_API_URL=.../e2b and
E2B_SANDBOX_URL=.../e2b/sandbox: thin handlers over the Sandboxes use case and the translations in
coderund/compat/e2b.

- The REST API (/e2b/sandboxes, /e2b/v2/sandboxes, /e2b/templates) takes an API key in X-API-Key (or
  as a Bearer token) and answers errors as E2B does: {"code": status, "message": ...}.
- The calls inside a sandbox (/e2b/sandbox/...) name the sandbox in E2b-Sandbox-Id and its port in
  E2b-Sandbox-Port (envd's, 49983, or the code interpreter's, 49999), and carry that sandbox's own
  access token in X-Access-Token or E2B-Traffic-Access-Token: the token, not a key, is their
  credential, and they act as the sandbox's owner.
"""
from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ...access import TASKS_READ, TASKS_WRITE
from ...compat.e2b import api as e2b
from ...compat.e2b import connect, envd, interpreter
from ...compat.e2b import messages as m
from ...domain import MAX_BODY_BYTES
from ...errors import AppError, NotFound, PayloadTooLarge, SandboxEnded, Unauthorized
from ...repository.sandboxes import SandboxRow
from ..keys import SERVICES, USER_ID
from ..middlewares import authorize, credential, request_token
from ..routes import read_json
from ..sandbox_routes import client_gone, drain, ndjson, send_file, stream_lines, write_file

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/e2b"
ENVD = "/sandbox"  # E2B_SANDBOX_URL's path under PREFIX
SANDBOX_ID, SANDBOX_PORT, ACCESS_TOKEN = "E2b-Sandbox-Id", "E2b-Sandbox-Port", "X-Access-Token"
TRAFFIC_TOKEN = "E2B-Traffic-Access-Token"  # the code interpreter's SDK sends the token only there on some calls
ROW = web.RequestKey("e2b_sandbox", SandboxRow)
STARTED = web.AppKey("e2b_started", datetime)
FORM = web.AppKey("e2b_form", str)  # which of make_app's forms an app serves
DOMAIN = web.AppKey("e2b_domain", str)  # the sandboxes' domain, when calls inside one name it by host
MAX_UPLOAD_FILES = 100  # files of one multipart upload


def _sandboxes(request: web.Request) -> Any:
    return request.app[SERVICES].sandboxes


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def e2b_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who calls (an API key, or a sandbox's token inside it), and every error in E2B's shape."""
    form = request.app[FORM]
    inside = form == "sandbox" or (form == "path" and request.path.startswith(PREFIX + ENVD + "/"))
    try:
        if inside:
            request[ROW] = await _sandbox(request)
        elif request.match_info.handler is not health:
            token = credential(request.headers.get("X-API-Key", "")) or request_token(request)
            await authorize(request, token, TASKS_READ if request.method in ("GET", "HEAD") else TASKS_WRITE)
        return await handler(request)
    except e2b.E2bError as e:
        return _json(e2b.error(e.status, e.message), e.status)
    except connect.ConnectError as e:  # a path or a request refused before any call to the sandbox
        return _json(e2b.error(e.status, e.message), e.status)
    except SandboxEnded as e:
        # Inside, as E2B's proxy answers for a sandbox that is gone; outside, as its API does.
        return _json(e2b.error(502, e.message), 502) if inside else _json(e2b.error(404, f"Sandbox not found: {e.message}"), 404)
    except AppError as e:
        status = e.status
        if inside:  # envd's own statuses: a path that is a folder is a bad request, a full disk 507
            status = {409: 400, 413: 507}.get(status, status)
        return _json(e2b.error(status, e.message), status, e.headers or None)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json(e2b.error(e.status, f"{e.reason}: {request.method} {request.path}"), e.status)


async def _sandbox(request: web.Request) -> SandboxRow:
    """The sandbox a call inside it names, if it carries its token: 401 without, 502 once it has
    ended or for a port nothing serves, 404 for a path its port does not serve."""
    named = e2b.sandbox_host(request.headers.get("Host", ""), request.app[DOMAIN]) if request.app[DOMAIN] else None
    port = named[0] if named else request.headers.get(SANDBOX_PORT, str(envd.ENVD_PORT))
    if port not in (str(envd.ENVD_PORT), str(interpreter.INTERPRETER_PORT)):
        raise e2b.E2bError(502, f"Port {port[:10]!r} of the sandbox is not served; only envd's, {envd.ENVD_PORT},"
                                f" and the code interpreter's, {interpreter.INTERPRETER_PORT}.")
    if (request.match_info.handler in INTERPRETER) != (port == str(interpreter.INTERPRETER_PORT)):
        raise e2b.E2bError(404, f"Port {port} of the sandbox serves no {request.method} {request.path}.")
    sandbox_id = named[1] if named else credential(request.headers.get(SANDBOX_ID, ""))
    token = credential(request.headers.get(ACCESS_TOKEN, "") or request.headers.get(TRAFFIC_TOKEN, ""))
    if sandbox_id and not token and "signature" in request.query and request.match_info.handler in SIGNED:
        # a signed URL (E2B's download_url, upload_url): the signature, made with the token, stands for it
        operation = SIGNED[request.match_info.handler]
        return await _sandboxes(request).by_signature(
            sandbox_id, lambda secret: envd.check_signature(request.query, operation, secret, time.time()))
    if not sandbox_id or not token:
        raise Unauthorized(f"An envd call names its sandbox in {SANDBOX_ID} and carries its access token in {ACCESS_TOKEN}.")
    return await _sandboxes(request).by_token(sandbox_id, token)


async def _body(request: web.Request) -> Any:
    return await read_json(request) if request.can_read_body else {}


def _sandbox_id(request: web.Request) -> str:
    return request.match_info["sandbox_id"]


# ---- the REST API ----

async def health(request: web.Request) -> web.Response:
    return _json({"message": "Health check successful"})


async def create(request: web.Request) -> web.Response:
    sandboxes = _sandboxes(request)
    row = await sandboxes.create(request[USER_ID], e2b.parse_new_sandbox(await _body(request), sandboxes.limits,
                                                                         sandboxes.admission.ceiling.network))
    return _json(e2b.sandbox(row), 201)


async def _list(request: web.Request, default_states: tuple[str, ...]) -> tuple[list[dict[str, Any]], str | None]:
    asked = e2b.parse_list(dict(request.query), default_states)
    return e2b.page(await _sandboxes(request).of_user(request[USER_ID], asked["metadata"]), asked)


async def list_v2(request: web.Request) -> web.Response:
    found, next_token = await _list(request, e2b.STATES)
    return _json(found, headers={"X-Next-Token": next_token} if next_token else None)


async def list_running(request: web.Request) -> web.Response:
    return _json((await _list(request, ("running",)))[0])


async def info(request: web.Request) -> web.Response:
    return _json(e2b.detail(await _sandboxes(request).find(request[USER_ID], _sandbox_id(request))))


async def kill(request: web.Request) -> web.Response:
    await _sandboxes(request).delete(request[USER_ID], _sandbox_id(request))
    return web.Response(status=204)


async def set_timeout(request: web.Request) -> web.Response:
    sandboxes = _sandboxes(request)
    timeout = e2b.parse_timeout(await _body(request), "timeout", sandboxes.limits)
    await sandboxes.extend(request[USER_ID], _sandbox_id(request), timeout)
    return web.Response(status=204)


async def refresh(request: web.Request) -> web.Response:
    sandboxes = _sandboxes(request)
    duration = e2b.parse_timeout(await _body(request), "duration", sandboxes.limits, default=60)
    await sandboxes.extend(request[USER_ID], _sandbox_id(request), duration, only_longer=True)
    return web.Response(status=204)


async def pause(request: web.Request) -> web.Response:
    await _sandboxes(request).pause(request[USER_ID], _sandbox_id(request))
    return web.Response(status=204)


async def resume(request: web.Request) -> web.Response:
    """E2B's older resume: 409 for a sandbox that is not paused."""
    sandboxes = _sandboxes(request)
    timeout = e2b.parse_timeout(await _body(request), "timeout", sandboxes.limits, default=15)
    if (await sandboxes.find(request[USER_ID], _sandbox_id(request))).state != "paused":
        raise e2b.E2bError(409, "The sandbox is already running.")
    await sandboxes.resume(request[USER_ID], _sandbox_id(request))
    return _json(e2b.sandbox(await sandboxes.extend(request[USER_ID], _sandbox_id(request), timeout)), 201)


async def connect_sandbox(request: web.Request) -> web.Response:
    """Resumes a paused sandbox (201) or finds a running one (200); its end only moves later."""
    sandboxes = _sandboxes(request)
    timeout = e2b.parse_timeout(await _body(request), "timeout", sandboxes.limits)
    paused = (await sandboxes.find(request[USER_ID], _sandbox_id(request))).state == "paused"
    await sandboxes.resume(request[USER_ID], _sandbox_id(request))
    row = await sandboxes.extend(request[USER_ID], _sandbox_id(request), timeout, only_longer=True)
    return _json(e2b.sandbox(row), 201 if paused else 200)


async def templates(request: web.Request) -> web.Response:
    return _json(e2b.templates(_sandboxes(request).limits, request.app[STARTED]))


# ---- envd, inside a sandbox ----

def _call(request: web.Request, op: dict[str, Any], data: bytes = b"", **options: Any) -> Any:
    row = request[ROW]
    return _sandboxes(request).call(row.user_id, str(row.id), op, data, row=row, **options)


async def envd_health(request: web.Request) -> web.Response:
    """204 while it runs; 502 while paused (any other call resumes it), as E2B's SDKs tell is_running()."""
    if request[ROW].state == "paused":
        return _json(e2b.error(502, "The sandbox is paused; connect to it, or call it, to resume it."), 502)
    return web.Response(status=204)


async def download(request: web.Request) -> web.StreamResponse:
    return await send_file(request, _sandboxes(request), request[ROW], envd.work_path(request.query.get("path", "")))


async def upload(request: web.Request) -> web.Response:
    """Multipart (each part's file name its path, or ?path for one) or the raw body to ?path; folders
    made as needed, a file replaced. The files written, as envd lists them."""
    row, sandboxes = request[ROW], _sandboxes(request)
    metadata = envd.upload_metadata(request.headers.items())
    if (request.content_length or 0) > row.disk_mb * 1024 * 1024:
        raise PayloadTooLarge(f"The upload is over the sandbox's disk quota of {row.disk_mb} MiB.")
    if request.content_type != "multipart/form-data":
        if "path" not in request.query:
            raise e2b.E2bError(400, "A raw upload names its file in ?path.")
        path = envd.work_path(request.query["path"])
        await write_file(sandboxes, row, path, request.content.read, metadata)
        return _json([envd.written(path, metadata)])
    written: list[dict[str, Any]] = []
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if len(written) >= MAX_UPLOAD_FILES:
                raise e2b.E2bError(400, f"An upload takes at most {MAX_UPLOAD_FILES} files.")
            name = request.query.get("path") if "path" in request.query else getattr(part, "filename", None)
            if not name:
                raise e2b.E2bError(400, "Each file of a multipart upload names its path as its file name.")
            path = envd.work_path(name)
            await write_file(sandboxes, row, path, part.read_chunk, metadata)
            written.append(envd.written(path, metadata))
    except (ValueError, HttpProcessingError) as e:  # a body that is not multipart, or cut short
        raise e2b.E2bError(400, f"The multipart body does not parse: {e}") from None
    return _json(written)


SIGNED = {download: "read", upload: "write"}  # what a signed URL may do, as envd names it
Unary = Callable[[web.Request, dict[str, Any]], Awaitable[dict[str, Any]]]


async def list_processes(request: web.Request, _: dict[str, Any]) -> dict[str, Any]:
    return envd.process_list((await drain(_call(request, {"op": "commands"})))["commands"])


async def send_input(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    op, data = envd.input_op(message)
    await drain(_call(request, {**op, "data": base64.b64encode(data).decode()}))
    return {}


async def send_signal(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    await drain(_call(request, envd.signal_op(message)))
    return {}


async def close_stdin(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    await drain(_call(request, {"op": "close_stdin", **envd.selector(message)}))
    return {}


async def update(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    if (op := envd.update_op(message)) is not None:
        await drain(_call(request, op))
    return {}


async def stat(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    end = await drain(_call(request, {"op": "stat", "path": envd.work_path(message.get("path") or envd.HOME)}))
    return {"entry": envd.entry_info(end["entry"])}


async def make_dir(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    end = await drain(_call(request, {"op": "mkdir", "path": envd.work_path(message.get("path") or envd.HOME)}))
    return {"entry": envd.entry_info(end["entry"])}


async def move(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    op = {"op": "move", "source": envd.work_path(message.get("source") or ""),
          "destination": envd.work_path(message.get("destination") or "")}
    return {"entry": envd.entry_info((await drain(_call(request, op)))["entry"])}


async def list_dir(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    end = await drain(_call(request, envd.list_op(message)))
    return {"entries": [envd.entry_info(entry) for entry in end["entries"]]}


async def remove(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    """Removing what is not there is no error, as envd's."""
    try:
        await drain(_call(request, {"op": "delete", "path": envd.work_path(message.get("path") or "")}))
    except NotFound:
        pass
    return {}


async def create_watcher(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    return {"watcher_id": (await drain(_call(request, envd.watch_op(message))))["watcher"]}


async def watcher_events(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    end = await drain(_call(request, {"op": "watch_events", "watcher": message.get("watcher_id") or ""}))
    return envd.watch_events(end["events"])


async def remove_watcher(request: web.Request, message: dict[str, Any]) -> dict[str, Any]:
    await drain(_call(request, {"op": "unwatch", "watcher": message.get("watcher_id") or ""}))
    return {}


UNARY: dict[str, tuple[Any, Any, Unary]] = {
    "process.Process/List": (m.LIST_REQUEST, m.LIST_RESPONSE, list_processes),
    "process.Process/SendInput": (m.SEND_INPUT_REQUEST, m.EMPTY, send_input),
    "process.Process/SendSignal": (m.SEND_SIGNAL_REQUEST, m.EMPTY, send_signal),
    "process.Process/CloseStdin": (m.CLOSE_STDIN_REQUEST, m.EMPTY, close_stdin),
    "process.Process/Update": (m.UPDATE_REQUEST, m.EMPTY, update),
    "filesystem.Filesystem/Stat": (m.PATH_REQUEST, m.ENTRY_RESPONSE, stat),
    "filesystem.Filesystem/MakeDir": (m.PATH_REQUEST, m.ENTRY_RESPONSE, make_dir),
    "filesystem.Filesystem/Move": (m.MOVE_REQUEST, m.ENTRY_RESPONSE, move),
    "filesystem.Filesystem/ListDir": (m.LIST_DIR_REQUEST, m.LIST_DIR_RESPONSE, list_dir),
    "filesystem.Filesystem/Remove": (m.PATH_REQUEST, m.EMPTY, remove),
    "filesystem.Filesystem/CreateWatcher": (m.CREATE_WATCHER_REQUEST, m.CREATE_WATCHER_RESPONSE, create_watcher),
    "filesystem.Filesystem/GetWatcherEvents": (m.WATCHER_REQUEST, m.GET_WATCHER_EVENTS_RESPONSE, watcher_events),
    "filesystem.Filesystem/RemoveWatcher": (m.WATCHER_REQUEST, m.EMPTY, remove_watcher),
}
STREAMING = {"process.Process/Start": (m.START_REQUEST, m.START_RESPONSE),
             "process.Process/Connect": (m.CONNECT_REQUEST, m.CONNECT_RESPONSE)}


async def rpc(request: web.Request) -> web.StreamResponse:
    """One Connect call: a unary one answered with its message or a Connect error, Start as a stream."""
    method = f"{request.match_info['service']}/{request.match_info['method']}"
    codec = connect.codec(request.headers.get("Content-Type", ""))
    if codec is None:
        return _json(e2b.error(415, "A Connect call's Content-Type is application/json or application/proto, or"
                                    " application/connect+json or +proto for a stream."), 415)
    try:
        if method not in UNARY and method not in STREAMING:
            raise connect.ConnectError("unimplemented", f"{method[:200]} is not served.")
        if codec.streaming != (method in STREAMING):
            raise connect.ConnectError("invalid_argument", f"{method} is {'' if method in STREAMING else 'not '}a stream.")
        if codec.streaming:
            request_type, response_type = STREAMING[method]
            message = codec.decode(request_type, await request.read())
            op = (envd.command_op(message, connect.timeout_s(request.headers.get("Connect-Timeout-Ms")))
                  if method == "process.Process/Start" else {"op": "attach", **envd.selector(message)})
            return await stream_process(request, codec, op, response_type)
        request_type, response_type, handler = UNARY[method]
        answer = await handler(request, codec.decode(request_type, await request.read()))
        return web.Response(body=codec.encode(response_type, answer), content_type=codec.content_type)
    except connect.ConnectError as e:
        return _json(e.document(), e.status)
    except SandboxEnded as e:
        return _json(connect.from_app_error(e).document(), connect.STATUS["unavailable"])
    except AppError as e:
        error = connect.from_app_error(e)
        return _json(error.document(), error.status, e.headers or None)


async def stream_process(request: web.Request, codec: connect.Codec, op: dict[str, Any],
                         response_type: Any) -> web.StreamResponse:
    """A command's events as they come (start with its pid, its output, its end), the stream's end
    last with any error: a command started (Start), or one attached to (Connect). The command goes
    on if the client leaves."""
    events = _call(request, op)
    response = web.StreamResponse(headers={"Content-Type": codec.content_type})
    await response.prepare(request)
    try:
        try:
            async for event in events:
                for out in envd.process_events(event.body):
                    await response.write(codec.encode(response_type, out))
            await response.write(connect.end_stream())
        except connect.ConnectError as e:
            await response.write(connect.end_stream(e))
        except SandboxEnded:
            cut(request, reset=True)
        except AppError as e:
            await response.write(connect.end_stream(connect.from_app_error(e)))
        await response.write_eof()
    except ConnectionError:
        pass  # the client went: the command goes on, as E2B's do
    finally:
        await events.aclose()
    return response


# ---- the code interpreter, inside a sandbox ----

async def execute(request: web.Request) -> web.StreamResponse:
    """A run's events as E2B's NDJSON lines as they come; its client leaving interrupts it."""
    op = interpreter.run_op(await _body(request))
    async with aclosing(_call(request, op, client_gone=client_gone(request))) as events:
        try:
            return await stream_lines(request, events, lambda event: ndjson(interpreter.lines(event)))
        except SandboxEnded:
            cut(request)
            return web.Response()


def cut(request: web.Request, reset: bool = False) -> None:
    """A sandbox that ends under a streamed call cuts the connection, as E2B's proxy does when its
    host goes: E2B's SDKs then find the sandbox gone and say it was killed, not that the call timed
    out. envd's client takes only a reset connection for a dropped one once an answer has begun; the
    interpreter's takes a closed one before it."""
    if request.transport is None:
        return
    sock = request.transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.abort()


async def list_contexts(request: web.Request) -> web.Response:
    return _json(interpreter.contexts((await drain(_call(request, {"op": "context_list"})))["contexts"]))


async def create_context(request: web.Request) -> web.Response:
    language = interpreter.parse_context(await _body(request))
    return _json(interpreter.context((await drain(_call(request, {"op": "context_create", "language": language})))["context"]))


async def delete_context(request: web.Request) -> web.Response:
    await drain(_call(request, {"op": "context_delete", "context": request.match_info["context_id"]}))
    return web.Response(status=204)


async def restart_context(request: web.Request) -> web.Response:
    await drain(_call(request, {"op": "context_restart", "context": request.match_info["context_id"]}))
    return web.Response(status=204)


INTERPRETER = {execute, list_contexts, create_context, delete_context, restart_context}


def make_app(services: object, form: str = "path", domain: str = "") -> web.Application:
    """E2B's calls as one form serves them: "path" under PREFIX (the API, and a sandbox's calls under
    ENVD naming it in headers), "api" the API at api.{domain}'s root, "sandbox" a sandbox's calls at
    {port}-{sandboxID}.{domain}'s root."""
    app = web.Application(middlewares=[e2b_api], client_max_size=MAX_BODY_BYTES)
    app[SERVICES] = services
    app[STARTED] = datetime.now(UTC)
    app[FORM], app[DOMAIN] = form, domain
    for method, path, handler in ROUTES:
        inside = handler in ENVD_HANDLERS
        if form == "path" or (form == "sandbox") == inside:
            app.router.add_route(method, path.removeprefix(ENVD) if form == "sandbox" else path, handler)
    return app


def add_host_forms(app: web.Application, services: object, domain: str) -> None:
    """E2B's hosts under domain (E2B_DOMAIN): api.{domain} and {port}-{sandboxID}.{domain}. Added
    before any other route, as a host names its form whatever the path."""
    app.add_domain(f"api.{domain}", make_app(services, "api"))
    app.add_domain(f"*.{domain}", make_app(services, "sandbox", domain))


ONE = "/sandboxes/{sandbox_id}"
ROUTES = [
    ("GET", "/health", health),
    ("POST", "/sandboxes", create),
    ("GET", "/sandboxes", list_running),
    ("GET", "/v2/sandboxes", list_v2),
    ("GET", ONE, info),
    ("DELETE", ONE, kill),
    ("POST", f"{ONE}/timeout", set_timeout),
    ("POST", f"{ONE}/refreshes", refresh),
    ("POST", f"{ONE}/pause", pause),
    ("POST", f"{ONE}/resume", resume),
    ("POST", f"{ONE}/connect", connect_sandbox),
    ("GET", "/templates", templates),
    ("GET", f"{ENVD}/health", envd_health),
    ("GET", f"{ENVD}/files", download),
    ("POST", f"{ENVD}/files", upload),
    ("POST", ENVD + "/{service}/{method}", rpc),
    ("POST", f"{ENVD}/execute", execute),
    ("GET", f"{ENVD}/contexts", list_contexts),
    ("POST", f"{ENVD}/contexts", create_context),
    ("DELETE", ENVD + "/contexts/{context_id}", delete_context),
    ("POST", ENVD + "/contexts/{context_id}/restart", restart_context),
]
ENVD_HANDLERS = {handler for _, path, handler in ROUTES if path.startswith(ENVD + "/")}  # calls inside a sandbox
