"""The API's own document: valid, complete, true to the live server (schemathesis), and rendered."""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from openapi_spec_validator import validate

from coderund.access import ACCOUNT
from coderund.api.openapi import document
from coderund.api.routes import ROUTES
from coderund.api.sandbox_routes import SANDBOX_ROUTES
from tests.conftest import Api, own_server

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_document_is_valid_openapi_3_1():
    spec = document()
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "cookie", "judge0", "jobe", "e2b"}


def test_every_route_is_documented_and_nothing_else():
    from coderund.api.compat import e2b_routes
    from coderund.api.compat.jobe_routes import PREFIX, ROUTES as JOBE_ROUTES
    from coderund.api.compat.judge0_routes import ROUTES as JUDGE0_ROUTES

    documented = {(method.upper(), path) for path, ops in document()["paths"].items() for method in ops}
    piston = {(method, f"/piston{prefix}/api/v2/{name}") for prefix in ("", "/{key}")
              for method, name in (("GET", "runtimes"), ("POST", "execute"), ("GET", "connect"))}
    own = {(route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)) for route in ROUTES + SANDBOX_ROUTES}
    assert documented == own | {
        (method, "/judge0" + path) for method, path, _ in JUDGE0_ROUTES} | piston | {
        (method, PREFIX + path) for method, path, _ in JOBE_ROUTES} | {
        (method, e2b_routes.PREFIX + path) for method, path, _ in e2b_routes.ROUTES if not path.startswith(e2b_routes.ENVD)}


def test_protected_routes_declare_security_401_and_403():
    """401 without a valid session or key; 403 for a key without the route's scope, or a cookie
    request from another site."""
    spec = document()
    for route in ROUTES + SANDBOX_ROUTES:  # the Judge0 routes are all protected, by their own scheme
        operation = spec["paths"][re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)][route.method.lower()]
        assert ("security" in operation) == route.protected, route.path
        if route.protected:
            assert {"401", "403"} <= set(operation["responses"]), route.path


async def test_limits_and_scopes_answer_documented_statuses(settings, api):
    """What schemathesis with an unscoped key and no login limit never meets: a password hash over
    the per-address rate is 429 on /register and /login; a key without the account scope is 403 on
    the account routes. Each is a status its operation documents."""
    paths = document()["paths"]
    seen: list[tuple[str, str, int]] = []
    async with own_server(settings, role="api", login_per_address=2, queue=f"{settings.queue}.documented") as own, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))) as session:
        client = Api(session, own.base)  # an address of its own: no other test's hashes count against it
        credentials = {"username": f"documented_{id(client)}", "password": "password123"}
        for path in ("/register", "/login", "/register", "/login"):  # two hashes a minute, then 429
            seen.append(("post", path, (await client.call("POST", path, json=credentials))[0]))
    assert [status for *_, status in seen] == [201, 200, 429, 429]
    token = await api.user("documented")
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "r", "scopes": ["tasks:read"]})
    assert status == 201
    for route in ROUTES:
        if route.scope == ACCOUNT:
            path = route.path.replace("{key_id}", "1")
            seen.append((route.method.lower(), route.path, (await api.call(route.method, path, token=key["key"], json={}))[0]))
    assert {status for *_, status in seen[4:]} == {403}
    for method, path, status in seen:
        assert str(status) in paths[path][method]["responses"], (method, path, status)


async def test_live_document_and_docs_page(api):
    status, body, _ = await api.call("GET", "/openapi.json")
    assert status == 200 and body == document()
    status, page, headers = await api.call("GET", "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/docs/static/swagger-ui-bundle.js" in page and "http" not in page.split("<body>")[1].replace("/openapi.json", "")
    async with api.session.get(api.base + "/docs/static/swagger-ui-bundle.js") as response:
        assert response.status == 200 and len(await response.read()) > 100_000


async def schemathesis(server: str, credential: str, *options: str) -> subprocess.CompletedProcess[str]:
    """A schemathesis run of the four conformance checks against the live document, authenticated."""
    # In a thread: the server under test shares this event loop.
    return await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "-H", f"Authorization: Bearer {credential}", *options, "--suppress-health-check", "all", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600,
    )


async def test_schemathesis_against_the_live_api(server, api_token):
    """Zero failures of the four conformance checks, authenticated, on every operation but logout."""
    report = ARTIFACTS / "schemathesis.txt"
    ARTIFACTS.mkdir(exist_ok=True)
    done = await schemathesis(server, api_token, "--exclude-path", "/logout", "--phases", "examples,coverage,fuzzing",
                              "--max-examples", "40", "--workers", "2")
    report.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-4000:]


async def test_schemathesis_with_a_key_of_one_scope(server, api):
    """The account routes with a key that may only read tasks: every answer (403 on all but usage) documented."""
    token = await api.user("schemathesis")
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "r", "scopes": ["tasks:read"]})
    assert status == 201
    done = await schemathesis(server, key["key"], "--include-path-regex", "^/(account|logout)",
                              "--phases", "examples,coverage", "--max-examples", "10")
    assert done.returncode == 0, done.stdout[-4000:]


@pytest.fixture
async def api_token(api):
    return await api.user("schemathesis")


async def test_docs_render_in_headless_chromium(server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by scripts/test-env"
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=15000", "--window-size=1280,2400"]
    dom = await asyncio.to_thread(subprocess.run, [chromium, *flags, "--dump-dom", f"{server}/docs"],
                                  capture_output=True, text=True, timeout=120)
    for path in ("/register", "/login", "/task", "/tasks", "/task/{task_id}/cancel", "/account/webhook-secret",
                 "/result/{task_id}", "/languages", "/account/api-keys", "/account/usage", "/judge0/submissions"):
        assert f'data-path="{path}"' in dom.stdout, path
    assert "Authorize" in dom.stdout
    screenshot = ARTIFACTS / "docs.png"
    await asyncio.to_thread(subprocess.run, [chromium, *flags, f"--screenshot={screenshot}", f"{server}/docs"],
                            capture_output=True, timeout=120)
    assert screenshot.stat().st_size > 10_000
