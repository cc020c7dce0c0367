"""Issue 17's request-layer rows, each on a real server: decoding failures are 4xx JSON, caps are
atomic, floods are bounded, cookies need our own origin, one user's cases cannot starve another's."""
from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

import aiohttp
import psycopg
import pytest

from coderund.api.server import HEADER_TIMEOUT_S
from tests.conftest import own_server


async def raw(base: str, data: bytes, timeout: float = 10) -> bytes:
    """What the server answers to these bytes, read until it closes the connection."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def json_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head, answer[:300]
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe", b"Authorization: Bearer t\xc3\xa9k",
                                    b"Cookie: coderund_session=\xff"])
async def test_credentials_that_are_not_text_are_401(server, header):
    status, body = json_error(await raw(server, b"GET /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n"))
    assert status == 401 and body["error"] == "unauthorized"


@pytest.mark.parametrize("request_bytes, status", [
    # a body its Content-Encoding does not decode
    (b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip", 400),
    (b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Encoding: deflate\r\nContent-Length: 8\r\n\r\nnot zlib", 400),
    (b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nxx", 400),
    # errors the HTTP parser finds before any handler
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"FOO@ /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nConnection: close\r\n\r\n", 417),
])
async def test_every_error_is_json(server, request_bytes, status):
    got, body = json_error(await raw(server, request_bytes))
    assert got == status and body["error"] in ("invalid_json", "bad_request") and body["message"], body


async def test_a_gzip_body_that_decodes_is_read(api):
    body = gzip.compress(json.dumps({"username": "gz_" + str(time.time_ns())[-9:], "password": "password123"}).encode())
    status, answer, _ = await api.call("POST", "/register", data=body, headers={"Content-Encoding": "gzip",
                                                                               "Content-Type": "application/json"})
    assert status == 201, answer


async def test_headers_must_arrive_in_time(server):
    """Slowloris: a request whose headers never end loses its connection."""
    started = time.monotonic()
    answer = await raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=HEADER_TIMEOUT_S + 10)
    assert answer == b"" and time.monotonic() - started < HEADER_TIMEOUT_S + 5


async def test_a_batch_item_with_a_bad_callback_fails_alone(api):
    token = await api.user("batch")
    status, body, _ = await api.call("POST", "/tasks", token=token, json={"tasks": [
        {"language": "python", "code": "print(1)"},
        {"language": "python", "code": "print(2)", "callback_url": "http://a..b/"}]})
    assert status == 201, body
    first, second = body["tasks"]
    assert "task_id" in first and second["error"] == "validation_failed" and "callback_url" in second["message"]
    assert (await api.result(token, first["task_id"]))["stdout"] == "1\n"


async def test_a_file_and_a_folder_of_one_name_are_refused(api):
    token = await api.user("files")
    status, body, _ = await api.call("POST", "/task", token=token, json={
        "language": "python", "code": "1", "files": [{"name": "a", "content": "x"}, {"name": "a/b", "content": "y"}]})
    assert status == 400 and "files[1].name" in body["message"] and "'a'" in body["message"]
    status, body, _ = await api.call("POST", "/task", token=token, json={
        "language": "python", "code": "1", "files": [{"name": "main.py/x", "content": "x"}]})
    assert status == 400 and "main.py" in body["message"]


async def test_the_unfinished_cap_holds_for_concurrent_submissions(settings):
    async with own_server(settings, user_max_pending=5, queue=f"{settings.queue}.cap") as api:
        token = await api.user("cap")
        answers = await asyncio.gather(*(api.call("POST", "/task", token=token, json={
            "language": "python", "code": "import time\ntime.sleep(1)"}) for _ in range(30)))
        accepted = [body["task_id"] for status, body, _ in answers if status == 201]
        assert len(accepted) == 5, [status for status, *_ in answers]
        assert {status for status, *_ in answers} == {201, 429}
        for task_id in accepted:
            await api.result(token, task_id)


async def test_a_login_flood_is_bounded_per_address(settings):
    async with own_server(settings, login_per_address=20, queue=f"{settings.queue}.flood") as api:
        answers = await asyncio.gather(*(api.call("POST", "/login", json={"username": f"nobody{i}", "password": "password123"})
                                         for i in range(200)))
        statuses = [status for status, *_ in answers]
        # 20 in the bucket, and the few it refills (one per 3 s) while the flood lasts
        assert statuses.count(401) <= 30 and statuses.count(429) >= 170, statuses
        assert all("Retry-After" in headers for status, _, headers in answers if status == 429)
        # Another address is not held back by the flood.
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=other) as session:
            account = {"username": f"legit_{time.time_ns() % 10**9}", "password": "password123"}
            async with session.post(api.base + "/register", json=account) as response:
                assert response.status == 201
            async with session.post(api.base + "/login", json=account) as response:
                assert response.status == 200


async def test_cookie_requests_need_our_own_origin(api, server):
    username = f"origin_{time.time_ns() % 10**9}"
    await api.call("POST", "/register", json={"username": username, "password": "password123"})
    status, body, headers = await api.call("POST", "/login", json={"username": username, "password": "password123"})
    cookie = {"Cookie": f"coderund_session={body['token']}"}
    task = {"language": "python", "code": "print(1)"}
    host = server.removeprefix("http://")
    # Another site's page (as the browser names it) is refused; ours, and a client that is no browser, are not.
    for extra, expected in (({"Origin": "http://evil.example"}, 403), ({"Origin": "null"}, 403),
                            ({"Sec-Fetch-Site": "cross-site"}, 403), ({"Sec-Fetch-Site": "same-site"}, 403),
                            ({"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}, 201), ({}, 201)):
        status, answer, _ = await api.call("POST", "/task", headers={**cookie, **extra}, json=task)
        assert status == expected, (extra, answer)
    # A GET with the cookie, and a Bearer token from anywhere, are as before.
    assert (await api.call("GET", "/tasks", headers=cookie))[0] == 200
    assert (await api.call("POST", "/task", token=body["token"], headers={"Origin": "http://evil.example"}, json=task))[0] == 201
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{server}/ws", headers={**cookie, "Origin": "http://evil.example"})
        assert refused.value.status == 403
        async with session.ws_connect(f"{server}/ws", headers={**cookie, "Origin": f"http://{host}"}) as ws:
            await ws.send_json({"type": "eof"})
            assert (await ws.receive_json(timeout=10))["error"] == "bad_message"


async def test_live_stdin_is_capped_per_run_and_must_be_text(api, server):
    token = await api.user("livecap")
    async with api.session.ws_connect(f"{server}/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send_json({"type": "run", "task": {"language": "python", "code": "import time\ntime.sleep(3)"}})
        assert (await ws.receive_json(timeout=10))["type"] == "accepted"
        await ws.send_str('{"type": "stdin", "data": "\\ud800"}')
        lone = await ws.receive_json(timeout=10)
        assert lone["type"] == "error" and lone["error"] == "bad_message", lone
        await ws.send_json({"type": "stdin", "data": "x" * 700_000})
        await ws.send_json({"type": "stdin", "data": "x" * 700_000})
        over = await ws.receive_json(timeout=10)
        assert over["type"] == "error" and over["error"] == "payload_too_large", over
        while (message := await ws.receive_json(timeout=30))["type"] != "result":
            pass
        assert message["result"]["verdict"] == "ok"


async def test_one_users_cases_do_not_starve_another(api, settings):
    hog, other = await api.user("hog"), await api.user("other")
    busy = {"language": "python", "code": "while True: pass", "limits": {"time_ms": 500},
            "tests": [{"stdin": "", "expected": ""}] * 12}
    hogs = [await api.submit(hog, **busy) for _ in range(2)]
    await asyncio.sleep(1)  # both are running
    hello = await api.run(other, language="python", code="print('hi')")
    assert hello["stdout"] == "hi\n"
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        rows = await (await conn.execute("SELECT state FROM tasks WHERE id = ANY(%s::uuid[])", (hogs,))).fetchall()
    assert [row[0] for row in rows] != ["done", "done"], "the hello waited for both hogs to finish"
    for task_id in hogs:
        await api.result(hog, task_id)
    # And a task's cases cannot hold a sandbox for longer than the cap.
    status, body, _ = await api.call("POST", "/task", token=hog, json={**busy, "limits": {"time_ms": 10000},
                                                                       "tests": [{"expected": ""}] * 64})
    assert status == 400 and "320 s" in body["message"]
