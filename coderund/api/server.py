"""The HTTP connection layer under the application: errors that aiohttp answers before any handler
(a request that is not valid HTTP, an unknown method, an undecodable body encoding) as our JSON, and a
bound on how long a client may take to send a request's headers."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .middlewares import error_body

HEADER_TIMEOUT_S = 15  # from the connection (or the last response) to a request's whole headers


class _Connection(RequestHandler):
    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises once a response has begun
        if status >= 500:
            response = error_body(status, "internal", "Something went wrong on our side.")
        else:
            detail = (message or "").splitlines()[0][:200] if message else ""
            response = error_body(status, "bad_request", f"The request is not valid HTTP{': ' + detail if detail else ''}.")
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections answer in JSON and time out slow headers (slowloris): an idle
    connection, or one whose request has not been read whole, closes after HEADER_TIMEOUT_S."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=HEADER_TIMEOUT_S, **kwargs)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(made.request_handler, request_factory=made.request_factory, **self._kwargs)


async def expect(request: web.Request) -> web.StreamResponse | None:
    """Expect: 100-continue as aiohttp does it; any other expectation is a JSON 417."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        if request.version == (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None
    return error_body(417, "bad_request", "The only expectation served is 100-continue.")
