"""Results pushed to waiting clients: `wait` on GET /result and POST /task, through PostgreSQL LISTEN/NOTIFY."""
from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from coderund.repository.notify import FINISHED as CHANNEL

SLOW = "import time; time.sleep(1); print('done')"


async def test_result_wait_answers_as_soon_as_the_task_finishes(api):
    token = await api.user("wait")
    task_id = await api.submit(token, language="python", code=SLOW)
    started = time.monotonic()
    status, body, _ = await api.call("GET", f"/result/{task_id}?wait=20", token=token)
    elapsed = time.monotonic() - started
    assert status == 200 and body["stdout"] == "done\n" and body["verdict"] == "ok"
    assert 0.8 < elapsed < 10


async def test_result_wait_answers_202_at_its_deadline(api):
    token = await api.user("wait")
    task_id = await api.submit(token, language="python", code="import time; time.sleep(4)")
    started = time.monotonic()
    status, body, headers = await api.call("GET", f"/result/{task_id}?wait=1", token=token)
    assert status == 202 and body == {"status": "in_progress"} and "Retry-After" in headers
    assert 0.9 < time.monotonic() - started < 3
    status, body, _ = await api.call("GET", f"/result/{task_id}?wait=1.5", token=token)
    assert status in (200, 202)  # either way, within its own deadline


async def test_submit_with_wait_carries_the_whole_result(api):
    token = await api.user("wait")
    status, body, headers = await api.call("POST", "/task?wait=20", token=token,
                                           json={"language": "python", "code": "print(input() * 2)", "stdin": "ab\n"})
    assert status == 201 and body["verdict"] == "ok" and body["stdout"] == "abab\n" and body["status"] == "ready"
    assert headers["Location"] == f"/result/{body['task_id']}"
    _, stored, _ = await api.call("GET", f"/result/{body['task_id']}", token=token)
    assert {k: v for k, v in body.items() if k != "task_id"} == stored
    # Not finished within the wait: the usual answer.
    status, body, _ = await api.call("POST", "/task?wait=0.2", token=token, json={"language": "python", "code": SLOW})
    assert status == 201 and list(body) == ["task_id"]


@pytest.mark.parametrize("wait", ["abc", "-1", "31", "nan", "inf", ""])
async def test_a_bad_wait_is_400_and_submits_nothing(api, settings, wait):
    token = await api.user("wait")
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        before = (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0]
        status, body, _ = await api.call("POST", f"/task?wait={wait}", token=token, json={"language": "python", "code": "1"})
        assert status == 400 and body["error"] == "validation_failed" and "'wait'" in body["message"]
        assert (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0] == before
    status, body, _ = await api.call("GET", f"/result/00000000-0000-0000-0000-000000000000?wait={wait}", token=token)
    assert status == 400 and body["error"] == "validation_failed"


async def test_wait_of_an_unknown_task_is_404_at_once(api):
    token = await api.user("wait")
    started = time.monotonic()
    status, body, _ = await api.call("GET", "/result/00000000-0000-0000-0000-000000000000?wait=20", token=token)
    assert status == 404 and time.monotonic() - started < 2


async def test_a_waiter_gets_its_result_across_listener_reconnects(api, settings):
    """The listening connection is killed again and again while the task finishes, so its NOTIFY is
    likely lost: the waiter still gets the result, by the re-read that follows each reconnect."""
    token = await api.user("wait")

    async def kill_listeners() -> int:
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
            rows = await (await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query = %s", (f"LISTEN {CHANNEL}",))).fetchall()
            return len(rows)

    task_id = await api.submit(token, language="python", code=SLOW)
    waiter = asyncio.create_task(api.call("GET", f"/result/{task_id}?wait=25", token=token))
    killed = 0
    for _ in range(25):  # 2.5 s around the task's finish
        killed += await kill_listeners()
        await asyncio.sleep(0.1)
    assert killed >= 1
    started = time.monotonic()
    status, body, _ = await waiter
    assert status == 200 and body["stdout"] == "done\n"
    assert time.monotonic() - started < 15  # the reconnect's re-read, not the deadline, answered
