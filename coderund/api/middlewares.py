"""Errors as JSON, and authentication of protected routes."""
from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..access import TASKS_WRITE
from ..errors import AppError, Forbidden, InvalidJson, Unauthorized
from .keys import PROTECTED, SERVICES, SESSION_COOKIE, TOKEN, USER_ID

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_CODES = {
    400: "validation_failed",
    401: "unauthorized",
    403: "forbidden",
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
    except (HttpProcessingError, RequestPayloadError) as e:  # a body its Content-Encoding does not decode, and the like
        detail = getattr(e, "message", None) or str(e).splitlines()[-1].strip()
        return error_body(400, InvalidJson.code, f"The request body cannot be read: {detail}.")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        message = {404: f"There is no route {request.path}.", 405: f"{request.method} is not allowed on {request.path}.",
                   413: "The request body is too large."}.get(e.status, e.reason)
        return error_body(e.status, HTTP_CODES.get(e.status, "internal"), message, headers)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        resource = request.match_info.route.resource  # the route, never the raw path: it may carry a key
        log.exception("unhandled error %s on %s %s", incident, request.method, resource.canonical if resource else "?")
        return error_body(500, "internal", f"Something went wrong on our side (incident {incident}).")


def credential(value: str) -> str | None:
    """Tokens and keys are printable ASCII: anything else (bytes that are not UTF-8 come as
    surrogates) names no session."""
    value = value.strip()
    return value if value and value.isascii() and value.isprintable() else None


def request_token(request: web.Request) -> str | None:
    """The token the request carries, as a Bearer token or in the session cookie. A header or cookie
    that holds no valid token counts as none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credential(token)
    cookie = request.cookies.get(SESSION_COOKIE)
    return credential(cookie) if cookie else None


def _same_origin(request: web.Request) -> bool:
    """A browser names the page that sends a POST or opens a WebSocket (Origin, Sec-Fetch-Site): when
    it names one, it must be one of ours. A client that is no browser names none, and is not a page
    another site could drive."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


@web.middleware
async def same_site(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The cookie goes along whatever page sends the request, a header only with its client: a request
    that carries the session cookie and changes something (or opens a WebSocket) must come from this
    server's own pages. One rule for every app and sub-app (Judge0's, Jobe's, Piston's too)."""
    if SESSION_COOKIE in request.cookies and (request.method not in ("GET", "HEAD", "OPTIONS") or _is_websocket(request)) \
            and not _same_origin(request):
        raise Forbidden("A request with the session cookie must come from this server's own pages, not another site's.")
    return await handler(request)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Protected routes answer 401 before anything looks at the body."""
    route = request.match_info.route.resource
    scope = request.app[PROTECTED].get((request.method, route)) if route is not None else None
    if scope is not None:
        token = request_token(request)
        await authorize(request, token, scope)
        request[TOKEN] = token
    return await handler(request)


async def authorize(request: web.Request, token: str | None, scope: str) -> None:
    """The one check of every API's credentials (coderund's, Judge0's, Piston's): Unauthorized without a
    valid one, Forbidden without the scope; the caller's user id on the request."""
    if token is None:
        raise Unauthorized()
    principal = await request.app[SERVICES].accounts.authenticate(token)
    if scope not in principal.scopes:
        resource = request.match_info.route.resource
        raise Forbidden(f"This API key lacks the scope {scope!r} that {request.method} "
                        f"{resource.canonical if resource else request.path} needs.")
    request[USER_ID] = principal.user_id


async def foreign(request: web.Request, handler: Handler, token: str | None,
                  reply: Callable[[str, int, dict[str, str] | None], web.Response],
                  unauthorized: Callable[[], web.Response] | None = None) -> web.StreamResponse:
    """A foreign API's middleware (Piston's, Jobe's): its credential checked as every API's is, with
    the tasks:write scope, and coderund's errors answered in that API's shape by reply(message, status,
    headers); unauthorized, if given, answers a missing or unknown credential."""
    try:
        await authorize(request, token, TASKS_WRITE)
        return await handler(request)
    except Unauthorized as e:
        return unauthorized() if unauthorized else reply(e.message, e.status, e.headers or None)
    except AppError as e:
        return reply(e.message, e.status, e.headers or None)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return reply(e.reason, e.status, None)


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"
