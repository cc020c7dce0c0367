"""Batches, task history with cursor pages, and cancel, on real services."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import subprocess
import time
import uuid
from pathlib import Path

import docker
import psycopg

from tests.conftest import api_of, free_port


async def test_a_batch_with_a_bad_item_in_the_middle(api, settings):
    token = await api.user("batch")
    bodies = [{"language": "python", "code": "print(1)"}, {"language": "brainfuck", "code": "x"},
              {"language": "python", "code": "print(3)", "limits": {"memory_mb": 1}}, "not an object",
              {"language": "python", "code": "print(5)"}]
    status, body, _ = await api.call("POST", "/tasks", token=token, json={"tasks": bodies})
    assert status == 201
    answers = body["tasks"]
    assert [("task_id" in a, a.get("error")) for a in answers] == [
        (True, None), (False, "unsupported_language"), (False, "validation_failed"), (False, "validation_failed"), (True, None)]
    ids = [answers[0]["task_id"], answers[4]["task_id"]]
    for task_id in ids:
        await api.result(token, task_id)
    other = await api.user("batch")
    query = ",".join([ids[0], "not-an-id", ids[1], "00000000-0000-0000-0000-000000000000", ids[0]])
    status, body, _ = await api.call("GET", f"/tasks?ids={query}", token=token)
    assert status == 200
    got = body["tasks"]
    assert [g["task_id"] for g in got] == query.split(",")
    assert [g.get("stdout") for g in got] == ["1\n", None, "5\n", None, "1\n"]
    assert [g.get("error") for g in got] == [None, "not_found", None, "not_found", None]
    _, body, _ = await api.call("GET", f"/tasks?ids={ids[0]}", token=other)  # not theirs
    assert body["tasks"][0]["error"] == "not_found"
    for bad in ({"tasks": []}, {"tasks": [{}] * 101}, {"tasks": "x"}, []):
        status, body, _ = await api.call("POST", "/tasks", token=token, json=bad)
        assert status == 400 and body["error"] == "validation_failed"


async def test_history_pages_stay_stable_while_tasks_are_added(api):
    token = await api.user("history")
    first = [await api.submit(token, language="python", code=f"print({i})") for i in range(7)]
    status, page1, _ = await api.call("GET", "/tasks?limit=3", token=token)
    assert status == 200 and [t["task_id"] for t in page1["tasks"]] == first[::-1][:3]
    # Newer tasks arrive between the pages: the next pages go on where the first stopped.
    later = [await api.submit(token, language="python", code="print('later')") for _ in range(2)]
    _, page2, _ = await api.call("GET", f"/tasks?limit=3&cursor={page1['next_cursor']}", token=token)
    _, page3, _ = await api.call("GET", f"/tasks?limit=3&cursor={page2['next_cursor']}", token=token)
    assert [t["task_id"] for t in page2["tasks"] + page3["tasks"]] == first[::-1][3:]
    assert page3["next_cursor"] is None or (await api.call("GET", f"/tasks?cursor={page3['next_cursor']}", token=token))[1]["tasks"] == []
    _, everything, _ = await api.call("GET", "/tasks?limit=100", token=token)
    assert [t["task_id"] for t in everything["tasks"]] == (first + later)[::-1] and everything["next_cursor"] is None
    entry = everything["tasks"][0]
    assert set(entry) == {"task_id", "status", "state", "language", "verdict", "created_at", "started_at", "finished_at"}
    for task_id in first + later:
        await api.result(token, task_id)
    _, done, _ = await api.call("GET", "/tasks?state=done&language=py&limit=100", token=token)
    assert len(done["tasks"]) == 9 and {t["verdict"] for t in done["tasks"]} == {"ok"}
    _, none, _ = await api.call("GET", "/tasks?state=queued", token=token)
    assert none["tasks"] == []
    for bad in ("state=sleeping", "limit=0", "limit=101", "limit=x", "cursor=garbage", "language=brainfuck"):
        status, body, _ = await api.call("GET", f"/tasks?{bad}", token=token)
        assert status == 400 and body["error"] in ("validation_failed", "unsupported_language"), bad


async def test_cancel_a_queued_task_and_it_never_runs(settings):
    from coderund.daemon import serve

    s = dataclasses.replace(settings, role="api", queue=f"{settings.queue}.cancel", port=free_port())
    stop = asyncio.Event()
    running = asyncio.create_task(serve(s, stop))
    try:
        async with api_of(s) as api:
            token = await api.user("cancel")
            task_id = await api.submit(token, language="python", code="print('must not run')")
            status, body, _ = await api.call("POST", f"/task/{task_id}/cancel", token=token)
            assert status == 200 and body == {"task_id": task_id, "status": "ready", "verdict": "cancelled"}
            status, result, _ = await api.call("GET", f"/result/{task_id}", token=token)
            assert status == 200 and result["verdict"] == "cancelled" and result["stdout"] == ""
            status, body, _ = await api.call("POST", f"/task/{task_id}/cancel", token=token)
            assert status == 409 and body["error"] == "conflict"
            other = await api.user("cancel")
            assert (await api.call("POST", f"/task/{task_id}/cancel", token=other))[0] == 404
            assert (await api.call("POST", "/task/nope/cancel", token=other))[0] == 404
        # A worker that comes later finds it done and drops its message.
        worker = dataclasses.replace(s, role="worker", port=free_port())
        stop_worker = asyncio.Event()
        working = asyncio.create_task(serve(worker, stop_worker))
        await asyncio.sleep(3)
        stop_worker.set()
        await working
        async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
            row = await (await conn.execute("SELECT verdict, attempts, stdout FROM tasks WHERE id = %s", (task_id,))).fetchone()
        assert row[0] == "cancelled" and row[1] == 0 and not row[2]
    finally:
        stop.set()
        await running


def container_running(marker: str) -> str | None:
    """The container of the process whose command line holds marker (an argument of the task's)."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    for pid in found:
        with contextlib.suppress(OSError):
            ids = re.findall(r"[0-9a-f]{64}", Path(f"/proc/{pid}/cgroup").read_text())
            if ids:
                return ids[0]
    return None


async def test_cancel_a_running_task_kills_its_sandbox(api):
    token = await api.user("cancel")
    marker = f"marker-{uuid.uuid4().hex}"
    task_id = await api.submit(token, language="python", code="import time\ntime.sleep(60)", args=[marker])
    for _ in range(100):
        container = container_running(marker)
        if container:
            break
        await asyncio.sleep(0.1)
    assert container, "the task's program never ran"
    started = time.monotonic()
    status, body, _ = await api.call("POST", f"/task/{task_id}/cancel", token=token)
    assert status == 202 and body == {"task_id": task_id, "status": "in_progress", "cancelling": True}
    result = await api.result(token, task_id)
    assert result["verdict"] == "cancelled" and time.monotonic() - started < 3
    for _ in range(30):
        if not docker.from_env().api.containers(all=True, filters={"id": container}):
            break
        await asyncio.sleep(0.1)
    assert not docker.from_env().api.containers(all=True, filters={"id": container})
    assert container_running(marker) is None
    status, body, _ = await api.call("POST", f"/task/{task_id}/cancel", token=token)
    assert status == 409


async def test_finished_tasks_past_retention_are_deleted_in_batches(api, settings):
    from coderund.daemon import serve
    from coderund.repository.db import Database
    from coderund.repository.tasks import Tasks

    token = await api.user("retention")
    ids = [await api.submit(token, language="python", code=f"print({i})") for i in range(8)]
    for task_id in ids:
        await api.result(token, task_id)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute("UPDATE tasks SET finished_at = now() - interval '40 days' WHERE id = ANY(%s::uuid[])", (ids[:7],))
        await conn.execute("UPDATE tasks SET finished_at = now() - interval '29 days' WHERE id = %s", (ids[7],))
    db = Database(settings.database_url)
    await db.open()
    try:
        assert await Tasks(db).delete_expired(30, batch=3) == 3  # bounded
    finally:
        await db.close()
    # A worker's sweeper deletes the rest, and keeps the one not yet 30 days old.
    s = dataclasses.replace(settings, role="worker", queue=f"{settings.queue}.retention", port=free_port(), retention_days=30)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(s, stop))
    try:
        for _ in range(150):
            statuses = [(await api.call("GET", f"/result/{task_id}", token=token))[0] for task_id in ids]
            if statuses == [404] * 7 + [200]:
                break
            await asyncio.sleep(0.2)
        assert statuses == [404] * 7 + [200]
    finally:
        stop.set()
        await running
