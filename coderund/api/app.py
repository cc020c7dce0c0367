"""The aiohttp application: route table, middlewares, body limit."""
from __future__ import annotations

from aiohttp import web

from ..domain import MAX_BODY_BYTES
from .. import metrics
from . import docs, middlewares, server
from ..compat import judge0
from .compat import jobe_routes, judge0_routes, piston_routes
from .keys import PROTECTED, SERVICES, Services
from .routes import ROUTES


def make_app(services: Services, judge0_limits: judge0.Limits | None = None,
             jobe_queue_wait_s: float = jobe_routes.QUEUE_WAIT_S) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[metrics.http_metrics, middlewares.errors, middlewares.auth])
    app[SERVICES] = services
    app[PROTECTED] = {(route.method, route.path): route.scope for route in ROUTES if route.protected}
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, expect_handler=server.expect)
    docs.add_static(app)
    app.add_subapp("/judge0", judge0_routes.make_app(services, judge0_limits or judge0.Limits()))
    app.add_subapp("/piston", piston_routes.make_app(services))
    app.add_subapp(jobe_routes.PREFIX, jobe_routes.make_app(services, jobe_queue_wait_s))
    return app
