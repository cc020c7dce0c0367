"""E2B's SDK, unchanged, against coderund: configured only by E2B_API_URL, E2B_SANDBOX_URL and an
e2b_ key in E2B_API_KEY. The SDK is synchronous: each of its calls runs in a thread, so that the
coderund it talks to, in this process, keeps serving."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from e2b import CommandExitException, NotFoundException, Sandbox
from e2b.exceptions import AuthenticationException, SandboxException

pytestmark = pytest.mark.timeout(600)


async def e2b_key(api, token: str) -> str:
    status, body, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "e2b", "form": "e2b"})
    assert status == 201, body
    return body["key"]


@pytest.fixture(scope="module")
async def e2b_env(runtime_api):
    """The environment E2B's SDK reads, pointed at this coderund with a new user's key."""
    key = await e2b_key(runtime_api, await runtime_api.user("e2b"))
    return {"E2B_API_URL": f"{runtime_api.base}/e2b", "E2B_SANDBOX_URL": f"{runtime_api.base}/e2b/sandbox",
            "E2B_API_KEY": key}


@pytest.fixture
def e2b(e2b_env, monkeypatch):
    for name, value in e2b_env.items():
        monkeypatch.setenv(name, value)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def sandbox(e2b_env):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in e2b_env.items():
            patch.setenv(name, value)
        box = await call(Sandbox.create, metadata={"suite": "e2b"}, envs={"GREETING": "hello"})
        yield box
        await call(box.kill)


async def test_commands_stream_their_output_and_a_failure_raises(e2b, sandbox):
    seen = []
    result = await call(sandbox.commands.run, "echo one; echo two >&2; echo $GREETING", on_stdout=seen.append)
    assert result.exit_code == 0 and result.stdout == "one\nhello\n" and result.stderr == "two\n"
    assert "".join(seen) == "one\nhello\n"
    with pytest.raises(CommandExitException) as failed:
        await call(sandbox.commands.run, "echo out; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stdout == "out\n"


async def test_files_write_read_list_and_remove(e2b, sandbox):
    info = await call(sandbox.files.write, "/home/user/notes/a.txt", "first line\n")
    assert info.path == "/home/user/notes/a.txt" and info.name == "a.txt"
    assert await call(sandbox.files.read, "notes/a.txt") == "first line\n"
    await call(sandbox.files.write, "notes/b.bin", bytes(range(256)))
    assert bytes(await call(sandbox.files.read, "/home/user/notes/b.bin", format="bytes")) == bytes(range(256))
    entries = await call(sandbox.files.list, "/home/user/notes")
    assert [(e.name, e.path, e.size) for e in entries] == [("a.txt", "/home/user/notes/a.txt", 11),
                                                         ("b.bin", "/home/user/notes/b.bin", 256)]
    result = await call(sandbox.commands.run, "cat notes/a.txt", cwd="/home/user")
    assert result.stdout == "first line\n"
    assert await call(sandbox.files.exists, "notes/a.txt")
    await call(sandbox.files.remove, "notes/a.txt")
    assert not await call(sandbox.files.exists, "notes/a.txt")
    with pytest.raises(NotFoundException):
        await call(sandbox.files.read, "notes/a.txt")
