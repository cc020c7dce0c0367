"""The HTTP surface: JSON errors everywhere, health and readiness."""
from __future__ import annotations

import asyncio
import dataclasses

from coderund.domain import MAX_BODY_BYTES
from tests.conftest import api_of, free_port


async def test_malformed_json_is_400(api):
    status, body, _ = await api.call("POST", "/register", data=b'{"username": ')
    assert status == 400 and body == {"error": "invalid_json", "message": "The body is not valid JSON."}


async def test_unknown_route_is_json_404(api):
    status, body, headers = await api.call("GET", "/no/such/route")
    assert status == 404 and body["error"] == "not_found"
    assert headers["Content-Type"].startswith("application/json")


async def test_wrong_method_is_json_405(api):
    status, body, headers = await api.call("GET", "/register")
    assert status == 405 and body["error"] == "method_not_allowed" and "POST" in headers["Allow"]


async def test_oversized_body_is_413(api):
    token = await api.user()
    status, body, _ = await api.call("POST", "/task", token=token, data=b"x" * (MAX_BODY_BYTES + 1),
                                     headers={"Content-Type": "application/json"})
    assert status == 413 and body["error"] == "payload_too_large"


async def test_health_and_readiness(api):
    assert (await api.call("GET", "/healthz"))[:2] == (200, {"status": "ok"})
    status, body, _ = await api.call("GET", "/readyz")
    assert status == 200
    assert body["checks"] == {"postgresql": "ok", "rabbitmq": "ok", "docker": "ok", "images": "ok", "redis": "ok"}


async def test_dead_redis_is_503_and_named_by_readyz(settings):
    """Redis on a closed port: the API still starts, says what is missing, and answers 503, not 401/500."""
    from coderund.daemon import serve

    broken = dataclasses.replace(settings, role="api", port=free_port(), redis_url="redis://127.0.0.1:1/0")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(broken, stop))
    try:
        async with api_of(broken) as api:
            status, body, _ = await api.call("GET", "/readyz")
            assert status == 503 and body["error"] == "unavailable" and "redis" in body["message"]
            assert body["checks"]["postgresql"] == "ok" and body["checks"]["redis"] != "ok"
            status, body, headers = await api.call("POST", "/login", json={"username": "someone", "password": "password1"})
            assert status == 503 and body["error"] == "unavailable" and "Retry-After" in headers
            status, body, _ = await api.call("GET", "/status/x", token="whatever")
            assert status == 503 and body["error"] == "unavailable"
    finally:
        stop.set()
        await task
