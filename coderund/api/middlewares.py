"""Errors as JSON, and authentication of protected routes."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import AppError, Unauthorized
from .keys import PROTECTED, SERVICES, SESSION_COOKIE, TOKEN, USER_ID

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_CODES = {
    400: "validation_failed",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AppError as e:
        return error_body(e.status, e.code, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        message = {404: f"There is no route {request.path}.", 405: f"{request.method} is not allowed on {request.path}.",
                   413: "The request body is too large."}.get(e.status, e.reason)
        return error_body(e.status, HTTP_CODES.get(e.status, "internal"), message, headers)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", incident, request.method, request.path)
        return error_body(500, "internal", f"Something went wrong on our side (incident {incident}).")


def request_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(SESSION_COOKIE) or None


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Protected routes answer 401 before anything looks at the body."""
    route = request.match_info.route.resource
    if route is not None and route.canonical in request.app[PROTECTED]:
        token = request_token(request)
        if token is None:
            raise Unauthorized()
        request[USER_ID] = await request.app[SERVICES].accounts.authenticate(token)
        request[TOKEN] = token
    return await handler(request)
