"""The aiohttp application: route table, middlewares, body limit."""
from __future__ import annotations

from aiohttp import web

from ..domain import MAX_BODY_BYTES
from .. import metrics
from . import docs, middlewares, server
from ..compat import judge0
from .compat import e2b_routes, jobe_routes, judge0_routes, piston_routes
from .keys import PROTECTED, SERVICES, Services
from .routes import ROUTES
from .sandbox_routes import SANDBOX_ROUTES


def make_app(services: Services, judge0_limits: judge0.Limits | None = None,
             jobe_queue_wait_s: float = jobe_routes.QUEUE_WAIT_S, judge0_anonymous_user: str = "",
             e2b_domain: str = "") -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[metrics.http_metrics, middlewares.errors, middlewares.same_site, middlewares.auth])
    app[SERVICES] = services
    protected = app[PROTECTED] = {}
    if e2b_domain:
        e2b_routes.add_host_forms(app, services, e2b_domain)
    for route in ROUTES + SANDBOX_ROUTES:
        added = app.router.add_route(route.method, route.path, route.handler, expect_handler=server.expect)
        if route.protected:  # by the resource itself: a domain's sub-app (E2B's) may serve the same path
            protected[(route.method, added.resource)] = route.scope
    docs.add_static(app)
    app.add_subapp("/judge0", judge0_routes.make_app(services, judge0_limits or judge0.Limits(), judge0_anonymous_user))
    app.add_subapp("/piston", piston_routes.make_app(services))
    app.add_subapp(jobe_routes.PREFIX, jobe_routes.make_app(services, jobe_queue_wait_s))
    app.add_subapp(e2b_routes.PREFIX, e2b_routes.make_app(services))
    return app
