"""GET /ws: live runs over a WebSocket, one at a time per socket.

Client → server: {"type": "run", "task": {...a POST /task body...}, "tty": true|false}, then {"type": "stdin",
"data": "..."}, {"type": "eof"}, {"type": "cancel"}. With "tty" (the default), the program's stdin and stdout are a
terminal, its stderr a pipe; with "tty": false, all three are pipes. Server → client: {"type": "accepted", "task_id": "..."}, then
{"type": "compile"|"stdout"|"stderr", "data": "..."} as the program writes, and last {"type": "result",
"result": {...as GET /result...}}; {"type": "error", "error": code, "message": "..."} for a refused run
or a bad message. The authentication is the route's, checked before the upgrade.
"""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from .. import domain
from ..domain import MAX_BODY_BYTES, MAX_STDIN_BYTES
from ..errors import AppError, BadMessage, Conflict, PayloadTooLarge
from .keys import SERVICES, USER_ID

log = logging.getLogger(__name__)
IDLE_S = 300  # a socket with no run and no message for this long is closed
MAX_RUNS = 100  # per socket; then the client reconnects (and is counted by the rate limits as ever)
HEARTBEAT_S = 30


async def websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES, heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    await _Socket(ws, request).serve()
    return ws


class _Socket:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.services = request.app[SERVICES]
        self.user_id = request[USER_ID]
        self.runs = 0
        self.stdin_bytes = 0  # of the run in progress, its task's own stdin included
        self.task_id: uuid.UUID | None = None
        self.streaming: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.streaming is not None and not self.streaming.done()

    async def serve(self) -> None:
        try:
            while not self.ws.closed:
                try:
                    message = await self.ws.receive(timeout=IDLE_S)
                except TimeoutError:
                    if self.running:
                        continue
                    await self.ws.close(message=b"idle")
                    return
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return
                try:
                    await self._on(_parse(message))
                except AppError as e:
                    await self._send({"type": "error", "error": e.code, "message": e.message})
                except Exception:  # noqa: BLE001 - the socket, and the user's other runs, outlive a bug
                    incident = uuid.uuid4().hex[:12]
                    log.exception("unhandled error %s on /ws", incident)
                    await self._send({"type": "error", "error": "internal",
                                      "message": f"Something went wrong on our side (incident {incident})."})
        finally:
            if self.running:
                await self._abandon()

    async def _on(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "run":
            await self._run(message.get("task"), message.get("tty", True))
        elif kind in ("stdin", "eof", "cancel"):
            if not self.running or self.task_id is None:
                raise BadMessage(f"There is no run in progress for {kind!r}.")
            if kind == "stdin":
                await self.services.live.send(self.task_id, self._stdin(message.get("data")))
            elif kind == "eof":
                await self.services.live.end(self.task_id)
            else:
                await self._cancel()
        else:
            raise BadMessage("'type' must be one of run, stdin, eof, cancel.")

    def _stdin(self, data: Any) -> bytes:
        """A stdin message's bytes, counted against the run's stdin cap (as POST /task caps stdin)."""
        if not isinstance(data, str):
            raise BadMessage("'data' of a stdin message must be a string.")
        try:
            encoded = data.encode()
        except UnicodeEncodeError:
            raise BadMessage("'data' of a stdin message must be text (it holds a lone surrogate).") from None
        if self.stdin_bytes + len(encoded) > MAX_STDIN_BYTES:
            raise PayloadTooLarge(f"A run takes at most {MAX_STDIN_BYTES // 1024} KiB of stdin in all; this message was not sent.")
        self.stdin_bytes += len(encoded)
        return encoded

    async def _run(self, body: Any, tty: Any) -> None:
        if self.running:
            raise Conflict("A run is in progress on this socket; wait for its result or cancel it.")
        if self.runs >= MAX_RUNS:
            await self._send({"type": "error", "error": "too_many_runs",
                              "message": f"A socket serves {MAX_RUNS} runs; open a new one."})
            await self.ws.close()
            return
        if not isinstance(body, dict):
            raise BadMessage("'task' must be an object: a POST /task body.")
        if not isinstance(tty, bool):
            raise BadMessage("'tty' must be true (a terminal for the program's stdin and stdout) or false (pipes).")
        request = domain.parse_task_request(body)
        task_id = await self.services.live.submit(self.user_id, request, tty=tty)
        self.stdin_bytes = len(request.stdin.encode())
        self.runs += 1
        self.task_id = task_id
        await self._send({"type": "accepted", "task_id": str(task_id)})
        self.streaming = asyncio.create_task(self._stream(task_id))

    async def _stream(self, task_id: uuid.UUID) -> None:
        """The run's output as it comes, then its result."""
        decoders: dict[str, codecs.IncrementalDecoder] = {}
        try:
            async for kind, data in self.services.live.output(self.user_id, task_id):
                decoder = decoders.setdefault(kind, codecs.getincrementaldecoder("utf-8")(errors="replace"))
                if text := decoder.decode(data):
                    await self._send({"type": kind, "data": text})
            task = await self.services.tasks.get(self.user_id, str(task_id))
            await self._send({"type": "result", "result": domain.result_document(task)})
        except AppError as e:
            await self._send({"type": "error", "error": e.code, "message": e.message})

    async def _cancel(self) -> None:
        assert self.task_id is not None
        with contextlib.suppress(Conflict):  # it has just finished
            await self.services.tasks.cancel(self.user_id, str(self.task_id))

    async def _abandon(self) -> None:
        """The client is gone mid-run: the run ends now rather than at its time limit."""
        assert self.streaming is not None
        self.streaming.cancel()
        with contextlib.suppress(AppError):
            await self._cancel()

    async def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError):
            await self.ws.send_json(message)


def _parse(message: Any) -> dict[str, Any]:
    if message.type != WSMsgType.TEXT:
        raise BadMessage("Messages are JSON text.")
    parsed = domain.parse_json(message.data)
    if not isinstance(parsed, dict):
        raise BadMessage("A message must be a JSON object with a 'type'.")
    return parsed
