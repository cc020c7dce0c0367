"""Piston v2's routes under /piston (also /piston/<key>/..., for clients that can send no header):
thin handlers over the use cases and the pure translation in coderund/compat/piston.py."""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from ... import domain
from ...compat import piston
from ...domain import MAX_WAIT_S, TaskState
from ...errors import AppError
from ...plugins import Plugin
from ..keys import SERVICES, USER_ID
from ..middlewares import credential, foreign, request_token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXECUTE_WAITS = 10  # of MAX_WAIT_S each: a synchronous execute holds its connection at most this long


def _message(message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


@web.middleware
async def piston_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A key as a Bearer token or as the path's first segment (never logged); errors as Piston's {"message"}."""
    key = request.match_info.get("key")
    return await foreign(request, handler, credential(key) if key else request_token(request), _message)


async def runtimes(request: web.Request) -> web.Response:
    return web.json_response(piston.runtimes(request.app[SERVICES].plugins))


async def execute(request: web.Request) -> web.Response:
    """Synchronous, as Piston is: the answer is the finished run. Any Content-Type is taken as JSON
    (the npm piston-client sends text/plain)."""
    services = request.app[SERVICES]
    try:
        body = domain.parse_json(await request.read())
    except AppError as e:
        return _message(e.message, 400)
    parsed = piston.parse_execute(body, services.plugins)
    if isinstance(parsed, str):
        return _message(parsed, 400)
    plugin = services.plugins.get(parsed.language)
    task_id = str(await services.tasks.submit(request[USER_ID], parsed))
    for _ in range(EXECUTE_WAITS):
        task = await services.tasks.get(request[USER_ID], task_id, MAX_WAIT_S)
        if task.state is TaskState.DONE:
            return web.json_response(piston.result(task, plugin))
    return _message(f"The run did not finish in {EXECUTE_WAITS * MAX_WAIT_S} s (the queue is long); its result will be"
                    f" at GET /result/{task_id}.", 503, {"Retry-After": "5"})


class _Connection:
    """WS /api/v2/connect: Piston's interactive protocol over a coderund live run. In: init, then data
    (stdin) and signal; out: runtime, stage, data, exit, error; closed with Piston's codes."""

    INIT_S = 1  # as Piston: a socket that sends no init within a second is closed

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws, self.services, self.user_id = ws, request.app[SERVICES], request[USER_ID]
        self.task_id: uuid.UUID | None = None
        self.streaming: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        try:
            while not self.ws.closed:
                try:
                    message = await self.ws.receive(timeout=self.INIT_S if self.task_id is None else None)
                except TimeoutError:
                    await self.ws.close(code=4001, message=b"Initialization Timeout")
                    return
                if message.type != WSMsgType.TEXT:
                    return
                await self._on(message.data)
        finally:
            if self.streaming is not None and not self.streaming.done():
                self.streaming.cancel()
                with contextlib.suppress(AppError):
                    await self.services.tasks.cancel(self.user_id, str(self.task_id))

    async def _on(self, text: str) -> None:
        try:
            message = domain.parse_json(text)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "init":
                if self.task_id is not None:
                    await self.ws.close(code=4000, message=b"Already Initialized")
                    return
                parsed = piston.parse_execute(message, self.services.plugins, interactive=True)
                if isinstance(parsed, str):
                    raise ValueError(parsed)
                plugin = self.services.plugins.get(parsed.language)
                self.task_id = await self.services.live.submit(self.user_id, parsed)
                await self.ws.send_json({"type": "runtime", "language": piston.language_name(plugin),
                                         "version": piston.version(plugin)})
                self.streaming = asyncio.create_task(self._stream(plugin))
            elif kind in ("data", "signal") and self.task_id is None:
                await self.ws.close(code=4003, message=b"Not yet initialized")
            elif kind == "data":
                if message.get("stream") != "stdin" or not isinstance(message.get("data"), str):
                    await self.ws.close(code=4004, message=b"Can only write to stdin")
                    return
                await self.services.live.send(self.task_id, message["data"].encode(errors="replace"))
            elif kind == "signal":
                if message.get("signal") not in SIGNALS:
                    await self.ws.close(code=4005, message=b"Invalid signal")
                    return
                with contextlib.suppress(AppError):
                    await self.services.tasks.cancel(self.user_id, str(self.task_id))
        except (AppError, ValueError) as e:
            await self.ws.send_json({"type": "error", "message": getattr(e, "message", None) or str(e)})
            await self.ws.close(code=4002, message=b"Notified Error")

    async def _stream(self, plugin: Plugin) -> None:
        assert self.task_id is not None
        stage = "compile" if plugin.compile else "run"
        await self.ws.send_json({"type": "stage", "stage": stage})
        decoders: dict[str, codecs.IncrementalDecoder] = {}
        async for kind, data in self.services.live.output(self.user_id, self.task_id):
            if kind != "compile" and stage == "compile":
                await self.ws.send_json({"type": "exit", "stage": "compile", "code": 0, "signal": None})
                stage = "run"
                await self.ws.send_json({"type": "stage", "stage": "run"})
            decoder = decoders.setdefault(kind, codecs.getincrementaldecoder("utf-8")(errors="replace"))
            if text := decoder.decode(data):
                await self.ws.send_json({"type": "data", "stream": "stderr" if kind == "compile" else kind, "data": text})
        task = await self.services.tasks.get(self.user_id, str(self.task_id))
        answer = piston.result(task, plugin)
        if stage == "compile" and "compile" in answer and answer["compile"]["code"] == 0:
            await self.ws.send_json({"type": "exit", "stage": "compile", "code": 0, "signal": None})
            await self.ws.send_json({"type": "stage", "stage": "run"})
        final = answer["run"]
        await self.ws.send_json({"type": "exit", "stage": "compile" if answer.get("run") is answer.get("compile") else "run",
                                 "code": final["code"], "signal": final["signal"]})
        await self.ws.close(code=4999, message=b"Job Completed")


SIGNALS = ("SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCLD", "SIGCONT", "SIGEMT", "SIGFPE", "SIGHUP", "SIGILL", "SIGINFO",
           "SIGINT", "SIGIO", "SIGIOT", "SIGKILL", "SIGLOST", "SIGPIPE", "SIGPOLL", "SIGPROF", "SIGPWR", "SIGQUIT", "SIGSEGV",
           "SIGSTKFLT", "SIGSTOP", "SIGTSTP", "SIGSYS", "SIGTERM", "SIGTRAP", "SIGTTIN", "SIGTTOU", "SIGUNUSED", "SIGURG",
           "SIGUSR1", "SIGUSR2", "SIGVTALRM", "SIGXCPU", "SIGXFSZ", "SIGWINCH")  # Piston's list: any of them ends the run


async def connect(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=domain.MAX_BODY_BYTES)
    await ws.prepare(request)
    await _Connection(ws, request).serve()
    return ws


def make_app(services: object) -> web.Application:
    app = web.Application(middlewares=[piston_api])
    app[SERVICES] = services
    for prefix in ("", "/{key}"):
        app.router.add_get(prefix + "/api/v2/runtimes", runtimes)
        app.router.add_post(prefix + "/api/v2/execute", execute)
        app.router.add_get(prefix + "/api/v2/connect", connect)
    return app
