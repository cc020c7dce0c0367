"""Sandboxes that outlive their worker, under runc and gVisor: a pause persists a sandbox's files and
releases its container; the next call restores it on any worker; a worker that stops stores what it
hosts; one killed outright is noticed at once; a fork is a sandbox of its own; and a sandbox's state
is its own, and stays inside its folders."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import signal
import tarfile
import time

import docker
import psycopg
import pytest

from tests.conftest import api_of, free_port
from tests.test_sandboxes import command, container_exists, container_of_sandbox, create, run, wait_for

pytestmark = pytest.mark.timeout(600)
SITE = ".local/lib/python3.11/site-packages"  # pip install --user's, under the home (the work folder)


@pytest.fixture(scope="module")
async def owner(runtime_api):
    return await runtime_api.user("durable")


async def sandbox(api, token, box):
    status, found, _ = await api.call("GET", f"/sandboxes/{box['id']}", token=token)
    assert status == 200, found
    return found


async def pause(api, token, box):
    status, found, _ = await api.call("POST", f"/sandboxes/{box['id']}/pause", token=token)
    assert status == 200, found
    assert found["state"] == "paused" and found["stored"] and found["persisted_bytes"] > 0, found
    return found


async def leave_files(api, token, box):
    """Files in each folder a sandbox's state holds, and a variable in its interpreter's memory."""
    status, _, _ = await api.call("PUT", f"/sandboxes/{box['id']}/files/data/in.txt", token=token, data=b"work folder\n")
    assert status == 201
    await command(api, token, box, f"echo in tmp > /tmp/t.txt && mkdir -p ~/{SITE} && echo 'X = 7' > ~/{SITE}/mine.py")
    await run(api, token, box, "kept_in_memory = 1")


async def files_are_back(api, token, box):
    found = await command(api, token, box, "cat data/in.txt /tmp/t.txt; python3 -c 'import mine; print(mine.X)'")
    assert found["stdout"] == "work folder\nin tmp\n7\n", found
    lost = await run(api, token, box, "kept_in_memory")
    assert lost["error"]["name"] == "NameError"  # files came back, the interpreter is fresh: and said so
    assert (await sandbox(api, token, box))["restored"] == "files"


async def test_pause_persists_files_releases_the_container_and_a_call_restores_them(runtime_api, owner):
    box = await create(runtime_api, owner)
    try:
        await leave_files(runtime_api, owner, box)
        container = await container_of_sandbox(runtime_api.settings, box["id"])
        started = time.monotonic()
        paused = await pause(runtime_api, owner, box)
        assert time.monotonic() - started < 30 and paused["restored"] is None
        await wait_for(lambda: not container_exists(container), 15)
        status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/pause", token=owner)
        assert status == 409, body
        status, usage, _ = await runtime_api.call("GET", "/account/usage", token=owner)
        assert status == 200 and usage["sandbox_state_bytes"] >= paused["persisted_bytes"]
        await files_are_back(runtime_api, owner, box)
        assert await container_of_sandbox(runtime_api.settings, box["id"]) != container
        listed = (await runtime_api.call("GET", f"/sandboxes/{box['id']}/files?path=data", token=owner))[1]
        assert [e["name"] for e in listed["entries"]] == ["in.txt"]
    finally:
        await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)
    async with await psycopg.AsyncConnection.connect(runtime_api.settings.database_url) as conn:
        left = await (await conn.execute("SELECT count(*) FROM sandbox_state WHERE sandbox_id = %s", (box["id"],))).fetchone()
    assert left[0] == 0  # deleted with the sandbox
