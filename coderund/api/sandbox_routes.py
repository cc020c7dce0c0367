"""HTTP handlers of stateful sandboxes (/sandboxes): parse, call the use case, shape the answer."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web

from ..access import TASKS_READ, TASKS_WRITE
from ..domain import iso
from ..errors import PayloadTooLarge
from ..network import parse_policy
from ..sandbox_requests import (FILE_CHUNK, CommandRequest, RunRequest, file_path, metadata_filter, parse_command,
                                parse_context, parse_run, parse_sandbox_request, parse_timeout)
from .keys import SERVICES, USER_ID
from .routes import Route, read_json

NDJSON = "application/x-ndjson"
MB = 1024 * 1024


def document(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "state": row.state, "language": row.language, "memory_mb": row.memory_mb,
            "cpus": row.cpus, "disk_mb": row.disk_mb, "idle_timeout_s": row.idle_timeout_s, "metadata": row.metadata,
            "created_at": iso(row.created_at), "expires_at": iso(row.expires_at),
            "network": None if row.network is None else row.network.document(),
            "stored": row.stored, "persisted_bytes": row.state_bytes, "restored": row.restored}


def _sandboxes(request: web.Request) -> Any:
    return request.app[SERVICES].sandboxes


def _id(request: web.Request) -> str:
    return request.match_info["sandbox_id"]


async def create(request: web.Request) -> web.Response:
    sandboxes = _sandboxes(request)
    row = await sandboxes.create(request[USER_ID], parse_sandbox_request(await read_json(request), sandboxes.limits))
    return web.json_response(document(row), status=201, headers={"Location": f"/sandboxes/{row.id}"})


async def list_sandboxes(request: web.Request) -> web.Response:
    rows = await _sandboxes(request).of_user(request[USER_ID], metadata_filter(dict(request.query)))
    return web.json_response({"sandboxes": [document(row) for row in rows]})


async def get(request: web.Request) -> web.Response:
    return web.json_response(document(await _sandboxes(request).find(request[USER_ID], _id(request))))


async def delete(request: web.Request) -> web.Response:
    await _sandboxes(request).delete(request[USER_ID], _id(request))
    return web.Response(status=204)


async def extend(request: web.Request) -> web.Response:
    sandboxes = _sandboxes(request)
    timeout_s = parse_timeout(await read_json(request), sandboxes.limits)
    return web.json_response(document(await sandboxes.extend(request[USER_ID], _id(request), timeout_s)))


async def pause(request: web.Request) -> web.Response:
    return web.json_response(document(await _sandboxes(request).pause(request[USER_ID], _id(request))))


async def resume(request: web.Request) -> web.Response:
    return web.json_response(document(await _sandboxes(request).resume(request[USER_ID], _id(request))))


async def fork(request: web.Request) -> web.Response:
    row = await _sandboxes(request).fork(request[USER_ID], _id(request))
    return web.json_response(document(row), status=201, headers={"Location": f"/sandboxes/{row.id}"})


def client_gone(request: web.Request) -> Any:
    """Whether the client has hung up: its run is then interrupted."""
    return lambda: request.transport is None or request.transport.is_closing()


async def run(request: web.Request) -> web.StreamResponse:
    asked: RunRequest = parse_run(await read_json(request))
    op = {"op": "run", "code": asked.code, "context": asked.context, "language": asked.language,
          "timeout_s": asked.timeout_s}
    return await _answer(request, op, _run_document)


async def command(request: web.Request) -> web.StreamResponse:
    asked: CommandRequest = parse_command(await read_json(request))
    op = {"op": "command", "cmd": list(asked.cmd), "cwd": asked.cwd, "env": asked.env, "stdin": asked.stdin,
          "timeout_s": asked.timeout_s}
    return await _answer(request, op, _command_document)


async def _answer(request: web.Request, op: dict[str, Any], shape: Any) -> web.StreamResponse:
    """The call's events as one JSON answer, or with Accept: application/x-ndjson one line each as they come."""
    async with aclosing(_sandboxes(request).call(request[USER_ID], _id(request), op,
                                                 client_gone=client_gone(request))) as events:
        if NDJSON not in request.headers.get("Accept", ""):
            return web.json_response(shape([message.body async for message in events]))
        return await stream_lines(request, events, lambda event: ndjson(_lines(event)))


async def stream_lines(request: web.Request, events: AsyncIterator[Any],
                       lines: Callable[[dict[str, Any]], bytes]) -> web.StreamResponse:
    """A call's events as NDJSON, lines(event) each, as they come; a refusal is still an error
    answer, before any line is sent. The caller closes events."""
    first = await anext(events)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    try:
        await response.prepare(request)
        async for message in _with_first(first, events):
            await response.write(lines(message.body))
    except ConnectionError:
        pass  # the client went: its run is interrupted (client_gone, or the call's close)
    return response  # aiohttp ends it (and minds a client that has gone)


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _lines(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One event as NDJSON lines: a run's end as its error (if any), its execution count, then the end."""
    event = {key: value for key, value in event.items() if key != "id"}
    lines = []
    if event["type"] == "end":
        if error := event.pop("error", None):
            lines.append({"type": "error", **error})
        if "execution_count" in event:
            lines.append({"type": "execution_count", "execution_count": event.pop("execution_count")})
    lines.append(event)
    return lines


def _collected(events: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    end = events[-1] if events and events[-1].get("type") == "end" else {}
    texts = {name: "".join(e["text"] for e in events if e.get("type") == name) for name in ("stdout", "stderr")}
    return end, texts


def _run_document(events: list[dict[str, Any]]) -> dict[str, Any]:
    end, texts = _collected(events)
    return {**texts, "results": [e["data"] for e in events if e.get("type") == "result"], "error": end.get("error"),
            "execution_count": end.get("execution_count"), "context": end.get("context"),
            "truncated": bool(end.get("truncated"))}


def _command_document(events: list[dict[str, Any]]) -> dict[str, Any]:
    end, texts = _collected(events)
    return {**texts, "exit_code": end.get("exit_code"), "signal": end.get("signal"),
            "timed_out": bool(end.get("timed_out")), "truncated": bool(end.get("truncated"))}


async def collect(events: AsyncIterator[Any]) -> tuple[dict[str, Any], bytes]:
    """A call's end event, and the bytes (a file's chunk) that came before it; the call closed."""
    found = bytearray()
    async with aclosing(events):
        async for message in events:
            found += message.data
            if message.body.get("type") == "end":
                return message.body, bytes(found)
    return {}, bytes(found)


async def drain(events: AsyncIterator[Any]) -> dict[str, Any]:
    """A call answered by its end event alone: that event."""
    return (await collect(events))[0]


async def _ask(request: web.Request, op: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    return await collect(_sandboxes(request).call(request[USER_ID], _id(request), op))


async def create_context(request: web.Request) -> web.Response:
    language = parse_context(await read_json(request))
    end, _ = await _ask(request, {"op": "context_create", "language": language})
    return web.json_response(end["context"], status=201)


async def list_contexts(request: web.Request) -> web.Response:
    return web.json_response({"contexts": (await _ask(request, {"op": "context_list"}))[0]["contexts"]})


async def delete_context(request: web.Request) -> web.Response:
    await _ask(request, {"op": "context_delete", "context": request.match_info["context_id"]})
    return web.Response(status=204)


async def put_file(request: web.Request) -> web.Response:
    """The raw body, in chunks, to the sandbox's disk; 413 naming the quota if it does not fit."""
    sandboxes = _sandboxes(request)
    path = file_path(request.match_info["path"])
    row = await sandboxes.find(request[USER_ID], _id(request))
    if (request.content_length or 0) > row.disk_mb * MB:
        raise PayloadTooLarge(f"The file is over the sandbox's disk quota of {row.disk_mb} MiB.")
    size = await write_file(sandboxes, row, path, request.content.read)
    return web.json_response({"path": path, "size": size}, status=201)


async def write_file(sandboxes: Any, row: Any, path: str, read: Callable[[int], Awaitable[bytes]],
                     metadata: dict[str, str] | None = None) -> int:
    """What read() gives, to its end, to the file at path in the sandbox (its folders made as needed),
    a chunk per call; past the sandbox's disk quota the file is removed and the answer is 413.
    With metadata, the file's is replaced by it. Its size."""
    quota = row.disk_mb * MB
    size, append = 0, False
    while True:
        chunk = await read(FILE_CHUNK)
        size += len(chunk)
        if size > quota:
            await drain(sandboxes.call(row.user_id, str(row.id), {"op": "delete", "path": path}, row=row))
            raise PayloadTooLarge(f"The file is over the sandbox's disk quota of {row.disk_mb} MiB.")
        if chunk or not append:
            op = {"op": "write", "path": path, "append": append}
            if metadata is not None and not append:
                op["metadata"] = metadata
            await drain(sandboxes.call(row.user_id, str(row.id), op, chunk, row=row))
        append = True
        if not chunk:
            return size


async def get_file(request: web.Request) -> web.StreamResponse:
    sandboxes = _sandboxes(request)
    row = await sandboxes.find(request[USER_ID], _id(request))
    return await send_file(request, sandboxes, row, file_path(request.match_info["path"]))


async def send_file(request: web.Request, sandboxes: Any, row: Any, path: str) -> web.StreamResponse:
    """The file a chunk per call to the sandbox, each asked once the client has taken the last: what
    waits for a slow reader is one chunk, never the file. As long as the file was when it began."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    offset, size = 0, None
    try:
        while size is None or offset < size:
            end, data = await collect(sandboxes.call(row.user_id, str(row.id), {"op": "read", "path": path, "offset": offset},
                                                     row=row))
            if size is None:  # not found and the like answer as errors, before any byte is sent
                size = end.get("size", 0)
                await response.prepare(request)
            if not data:
                break
            await response.write(data)
            offset += len(data)
    except ConnectionError:
        pass  # the client went: nothing more is asked
    return response


async def _with_first(first: Any, rest: Any) -> Any:
    yield first
    async for message in rest:
        yield message


async def delete_file(request: web.Request) -> web.Response:
    await _ask(request, {"op": "delete", "path": file_path(request.match_info["path"])})
    return web.Response(status=204)


async def list_files(request: web.Request) -> web.Response:
    path = file_path(request.query.get("path", "."))
    end, _ = await _ask(request, {"op": "list", "path": path})
    return web.json_response({"path": path, "entries": end["entries"], "truncated": bool(end.get("truncated"))})


async def set_network(request: web.Request) -> web.Response:
    policy = parse_policy(await read_json(request))
    return web.json_response(document(await _sandboxes(request).set_network(request[USER_ID], _id(request), policy)))


W, R = TASKS_WRITE, TASKS_READ
ONE = "/sandboxes/{sandbox_id}"
SANDBOX_ROUTES = [
    Route("POST", "/sandboxes", create, scope=W),
    Route("GET", "/sandboxes", list_sandboxes, scope=R),
    Route("GET", ONE, get, scope=R),
    Route("DELETE", ONE, delete, scope=W),
    Route("POST", f"{ONE}/timeout", extend, scope=W),
    Route("PUT", f"{ONE}/network", set_network, scope=W),
    Route("POST", f"{ONE}/pause", pause, scope=W),
    Route("POST", f"{ONE}/resume", resume, scope=W),
    Route("POST", f"{ONE}/fork", fork, scope=W),
    Route("POST", f"{ONE}/run", run, scope=W),
    Route("POST", f"{ONE}/commands", command, scope=W),
    Route("POST", f"{ONE}/contexts", create_context, scope=W),
    Route("GET", f"{ONE}/contexts", list_contexts, scope=R),
    Route("DELETE", f"{ONE}/contexts/{{context_id}}", delete_context, scope=W),
    Route("GET", f"{ONE}/files", list_files, scope=R),
    Route("PUT", f"{ONE}/files/{{path:.+}}", put_file, scope=W),
    Route("GET", f"{ONE}/files/{{path:.+}}", get_file, scope=R),
    Route("DELETE", f"{ONE}/files/{{path:.+}}", delete_file, scope=W),
]
