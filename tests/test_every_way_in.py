"""One admission step for every way in, on real services: what holds on POST /task holds on Judge0, Jobe,
Piston and the sandboxes too — limits clamped, files validated, sizes bounded, quotas and rates charged,
cookie requests checked for their site — and no input is a 5xx."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import psycopg
import pytest

from tests.conftest import own_server

pytestmark = pytest.mark.timeout(300)
JOBE = "/jobe/index.php/restapi"
THREADS = """
import threading, time
started = 0
try:
    for _ in range(300):
        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
        started += 1
except RuntimeError:
    pass
print(started)
"""


async def account(api, prefix: str) -> tuple[str, str]:
    """A new user's name and session token."""
    username = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await api.call("POST", "/register", json={"username": username, "password": "password123"})
    status, body, _ = await api.call("POST", "/login", json={"username": username, "password": "password123"})
    assert status == 200, body
    return username, body["token"]


async def tasks_of(settings, username: str) -> int:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM tasks JOIN users ON users.id = tasks.user_id"
                                        " WHERE username = %s", (username,))).fetchone()
    return row[0]


async def test_jobe_numprocs_cannot_raise_the_operators_pids_limit(runtime_api):
    token = await runtime_api.user("numprocs")
    run = {"run_spec": {"language_id": "python3", "sourcecode": THREADS, "parameters": {"numprocs": 1000}}}
    status, body, _ = await runtime_api.call("POST", f"{JOBE}/runs", token=token, json=run)
    assert status == 200, body
    started = int(body["stdout"])
    assert started < runtime_api.settings.pids_limit, body  # 300 with numprocs passed on as asked


async def test_cookie_requests_from_another_site_are_refused_on_every_api(api, server):
    _, token = await account(api, "csrf")
    cookie = {"Cookie": f"coderund_session={token}", "Origin": "http://evil.example", "Content-Type": "text/plain"}
    for path, body in ((f"{JOBE}/runs", '{"run_spec": {"language_id": "python3", "sourcecode": "print(1)"}}'),
                       ("/judge0/submissions", '{"language_id": 71, "source_code": "print(1)"}'),
                       ("/piston/api/v2/execute", '{"language": "python", "version": "*", "files": [{"content": "1"}]}'),
                       ("/sandboxes", "{}"), ("/e2b/sandboxes", '{"templateID": "base"}')):
        status, answer, _ = await api.call("POST", path, headers=cookie, data=body)
        assert status == 403 and answer["error"] == "forbidden", (path, answer)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{server}/piston/api/v2/connect", headers=cookie)
        assert refused.value.status == 403
    # The same request from our own page goes through.
    host = server.removeprefix("http://")
    status, answer, _ = await api.call("POST", "/piston/api/v2/execute", headers={**cookie, "Origin": f"http://{host}"},
                                       data='{"language": "python", "version": "*", "files": [{"content": "print(1)"}]}')
    assert status == 200 and answer["run"]["stdout"] == "1\n", answer


async def test_bad_file_sets_are_refused_at_once_by_every_api(api, settings):
    username, token = await account(api, "files")
    for name in ("../x", "/tmp/x", "./main.py"):
        status, body, _ = await api.call("POST", "/piston/api/v2/execute", token=token, json={
            "language": "python", "version": "*", "files": [{"content": "print(1)"}, {"name": name, "content": "x"}]})
        assert status == 400 and "files[0].name" in body["message"], body
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", "1")
        archive.writestr("a/b", "2")
    status, body, _ = await api.call("POST", "/judge0/submissions", token=token, json={
        "language_id": 89, "additional_files": base64.b64encode(buffer.getvalue()).decode()})
    assert status == 422 and "cannot also be a folder" in body["submission"][0], body
    status, body, _ = await api.call("POST", "/task", token=token, json={
        "language": "python", "code": "1", "files": [{"name": "a", "content": ""}, {"name": "a/b", "content": ""}]})
    assert status == 400
    assert await tasks_of(settings, username) == 0  # nothing was queued, nothing stored


async def test_stored_size_is_bounded_whatever_api_made_the_task(api, settings):
    username, token = await account(api, "amplify")
    content = base64.b64encode(b"x" * (1 << 20)).decode()
    assert (await api.call("PUT", f"{JOBE}/files/abcdefgh1", token=token, json={"file_contents": content}))[0] == 204
    run = {"run_spec": {"language_id": "python3", "sourcecode": "print(1)",
                        "file_list": [["abcdefgh1", f"copy{i}.txt"] for i in range(32)]}}
    status, body, _ = await api.call("POST", f"{JOBE}/runs", token=token, json=run)
    assert status == 413 and "2048 KiB" in body, body
    assert await tasks_of(settings, username) == 0
    # A file id is bounded, and an empty stored file counts toward the owner's bytes.
    status, body, _ = await api.call("PUT", f"{JOBE}/files/{'a' * 5000}", token=token, json={"file_contents": ""})
    assert status == 400 and "at most 128" in body, body


@pytest.mark.parametrize("path, body", [
    (f"{JOBE}/runs", {"run_spec": {"language_id": "python3", "sourcecode": "print(1)",
                                   "parameters": {"cputime": "nan", "numprocs": "-inf"}}}),
    (f"{JOBE}/runs", {"run_spec": {"language_id": "python3", "sourcecode": "print(1)",
                                   "parameters": {"cputime": "1e400", "numprocs": "1e400"}}}),
    (f"{JOBE}/runs", {"run_spec": {"language_id": "java", "sourcecode": "x", "parameters": {"main_class": 5}}}),
    ("/piston/api/v2/execute", '{"language": "python", "version": "*", "files": [{"content": "1"}], "run_timeout": 1e400}'),
])
async def test_numbers_and_types_no_api_expects_are_4xx_or_run(api, path, body):
    token = await api.user("nan")
    status, answer, _ = await api.call("POST", path, token=token, **({"data": body} if isinstance(body, str) else {"json": body}))
    assert status < 500, answer
    if status == 200 and path.startswith(JOBE):
        assert answer["outcome"] == 15 and answer["stdout"] == "1\n", answer  # the defaults stand for what is no number


async def test_judge0_paging_past_any_page_is_400(api):
    token = await api.user("page")
    status, body, _ = await api.call("GET", "/judge0/submissions?page=99999999999999999999", token=token)
    assert status == 400 and "page" in body["error"], body


async def test_a_field_no_task_has_is_400(api, settings):
    username, token = await account(api, "unknown")
    status, body, _ = await api.call("POST", "/task?wait=10", token=token,
                                     json={"language": "python", "code": "print(5)", "expected_output": "4"})
    assert status == 400 and "'expected_output' is not a task field" in body["message"], body
    assert await tasks_of(settings, username) == 0


async def test_typescript_written_for_judges_compiles_on_post_task(api):
    token = await api.user("ts")
    result = await api.run(token, language="typescript", stdin="hi",
                           code="declare const require: any;\nconsole.log(require('fs').readFileSync(0, 'utf8'))")
    assert result["verdict"] == "ok" and result["stdout"] == "hi\n", result


async def test_judge0_without_a_credential_serves_as_the_named_user_only_when_set(api, settings):
    username, token = await account(api, "anon")
    submission = {"language_id": 71, "source_code": "print(6 * 7)"}
    assert (await api.call("POST", "/judge0/submissions?wait=true", json=submission))[0] == 401
    async with own_server(settings, judge0_anonymous_user=username) as keyless:
        status, body, _ = await keyless.call("POST", "/judge0/submissions?wait=true", json=submission)
        assert status == 201 and body["stdout"] == "42\n", body
        status, body, _ = await keyless.call("GET", "/account/usage?days=1", token=token)
        assert body["days"][0]["tasks"] == 1  # the named user's, counted in their usage and quotas
        assert (await keyless.call("POST", "/task", json={"language": "python", "code": "1"}))[0] == 401
    async with own_server(settings, judge0_anonymous_user="nobody-by-that-name") as misnamed:
        assert (await misnamed.call("POST", "/judge0/submissions", json=submission))[0] == 401


@contextlib.asynccontextmanager
async def sandbox_of_quota(api, settings, **quota: int) -> AsyncIterator[tuple[str, dict]]:
    """A new user's token and sandbox, the user's quotas set as given; the sandbox ended after the block."""
    username, token = await account(api, "quota")
    sets = ", ".join(f"quota_{name} = %s" for name in quota)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute(f"UPDATE users SET {sets} WHERE username = %s", (*quota.values(), username))
    status, sandbox, _ = await api.call("POST", "/sandboxes", token=token, json={})
    assert status == 201, sandbox
    try:
        yield token, sandbox
    finally:
        await api.call("DELETE", f"/sandboxes/{sandbox['id']}", token=token)


async def test_sandbox_creates_forks_runs_and_commands_are_charged_to_the_rate(api, settings):
    async with sandbox_of_quota(api, settings, per_minute=3) as (token, sandbox):
        for _ in range(2):
            status, body, _ = await api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=token, json={"code": "1"})
            assert status == 200, body
        status, body, headers = await api.call("POST", f"/sandboxes/{sandbox['id']}/commands", token=token,
                                               json={"cmd": "true"})
        assert status == 429 and body["error"] == "rate_limited" and int(headers["Retry-After"]) > 0, body
        for path in ("/sandboxes", f"/sandboxes/{sandbox['id']}/fork"):  # a fork is a create, from a copy
            status, body, _ = await api.call("POST", path, token=token, json={})
            assert status == 429 and body["error"] == "rate_limited", (path, body)


async def test_e2b_commands_inside_a_sandbox_are_charged_to_its_owners_rate(api, settings):
    """E2B's envd calls act as the sandbox's owner: a command is charged to the owner's rate, and
    past it refused as Connect's resource_exhausted."""
    async with sandbox_of_quota(api, settings, per_minute=2) as (token, sandbox):
        status, detail, _ = await api.call("GET", f"/e2b/sandboxes/{sandbox['id']}", token=token)
        assert status == 200, detail
        headers = {"E2b-Sandbox-Id": sandbox["id"], "X-Access-Token": detail["envdAccessToken"],
                   "Content-Type": "application/connect+json"}
        start = b'{"process": {"cmd": "true"}}'
        body = len(start).to_bytes(5, "big") + start
        async with api.session.post(f"{api.base}/e2b/sandbox/process.Process/Start", data=body, headers=headers) as first:
            assert first.status == 200 and b'"exited": true' in await first.read()
        async with api.session.post(f"{api.base}/e2b/sandbox/process.Process/Start", data=body, headers=headers) as late:
            assert b'"resource_exhausted"' in await late.read()


async def test_sandbox_cpu_counts_in_usage_and_a_spent_quota_stops_it(api, settings):
    async with sandbox_of_quota(api, settings, cpu_s_per_day=1) as (token, sandbox):
        # A loop in the background keeps spending after its run has answered.
        spin = "import threading, time\ndef spin():\n    while True: pass\nthreading.Thread(target=spin, daemon=True).start()"
        status, body, _ = await api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=token, json={"code": spin})
        assert status == 200, body
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, usage, _ = await api.call("GET", "/account/usage?days=1", token=token)
            if usage["days"] and usage["days"][0]["cpu_ms"] >= 1000:
                break
            await asyncio.sleep(1)
        assert usage["days"][0]["languages"]["python"]["cpu_ms"] >= 1000, usage
        status, body, _ = await api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=token, json={"code": "1"})
        assert status == 429 and body["error"] == "quota_exceeded", body
        assert (await api.call("POST", "/task", token=token, json={"language": "python", "code": "1"}))[0] == 429
        # The worker paused it: its background loop spends no more.
        deadline = time.monotonic() + 30
        while (await api.call("GET", f"/sandboxes/{sandbox['id']}", token=token))[1]["state"] != "paused":
            assert time.monotonic() < deadline, "the sandbox of a spent quota kept running"
            await asyncio.sleep(1)


async def test_a_sandboxs_lifetime_cannot_be_extended_past_the_operators_bound(settings):
    async with own_server(settings, sandbox_max_lifetime_s=120) as api:
        token = await api.user("lifetime")
        status, sandbox, _ = await api.call("POST", "/sandboxes", token=token, json={"timeout_s": 60})
        assert status == 201, sandbox
        try:
            created = datetime.fromisoformat(sandbox["created_at"])
            for _ in range(3):
                status, extended, _ = await api.call("POST", f"/sandboxes/{sandbox['id']}/timeout", token=token,
                                                     json={"timeout_s": 100})
                assert status == 200, extended
            assert (datetime.fromisoformat(extended["expires_at"]) - created).total_seconds() <= 120
        finally:
            await api.call("DELETE", f"/sandboxes/{sandbox['id']}", token=token)
        # E2B's timeouts are held to the same bound, on create and after.
        status, created, _ = await api.call("POST", "/e2b/sandboxes", token=token, json={"templateID": "base", "timeout": 10**6})
        assert status == 201, created
        try:
            status, _, _ = await api.call("POST", f"/e2b/sandboxes/{created['sandboxID']}/timeout", token=token,
                                          json={"timeout": 10**6})
            assert status == 204
            status, info, _ = await api.call("GET", f"/e2b/sandboxes/{created['sandboxID']}", token=token)
            lifetime = datetime.fromisoformat(info["endAt"]) - datetime.fromisoformat(info["startedAt"])
            assert status == 200 and lifetime.total_seconds() <= 120, info
        finally:
            await api.call("DELETE", f"/e2b/sandboxes/{created['sandboxID']}", token=token)
