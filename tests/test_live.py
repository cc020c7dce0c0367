"""Live runs over GET /ws: streamed output, interactive stdin, cancel, disconnect, refusals, and the
API/worker split across processes."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import aiohttp
import docker
import pytest

from coderund.api import ws as ws_module
from tests.conftest import Api, api_of, free_port, own_server


async def connect(api: Api, token: str | None) -> aiohttp.ClientWebSocketResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await api.session.ws_connect(f"{api.base}/ws", headers=headers)


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 60) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def until_result(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[tuple[float, dict[str, Any]]], dict[str, Any]]:
    """Every message up to the result, each with when it came."""
    seen = []
    while True:
        message = await receive(ws)
        seen.append((time.monotonic(), message))
        if message["type"] in ("result", "error"):
            return seen, message


async def start(ws: aiohttp.ClientWebSocketResponse, **task: Any) -> str:
    await ws.send_json({"type": "run", "task": task})
    accepted = await receive(ws)
    assert accepted["type"] == "accepted", accepted
    return accepted["task_id"]


async def stdout_until(ws: aiohttp.ClientWebSocketResponse, end: str) -> str:
    """The program's output up to a prompt: it waits for an answer, so nothing else comes meanwhile."""
    text = ""
    while not text.endswith(end):
        message = await receive(ws)
        assert message["type"] == "stdout", message
        text += message["data"]
    return text


def joined(seen: list[tuple[float, dict[str, Any]]], kind: str) -> str:
    return "".join(m["data"] for _, m in seen if m["type"] == kind)


async def test_output_streams_in_order_as_the_program_writes_it(api):
    token = await api.user("live")
    code = ("import sys, time\nprint('one', flush=True)\nprint('oops', file=sys.stderr, flush=True)\n"
            "time.sleep(0.6)\nprint('two', flush=True)\n")
    async with await connect(api, token) as ws:
        task_id = await start(ws, language="python", code=code)
        seen, result = await until_result(ws)
    kinds = [m["type"] for _, m in seen]
    assert kinds.index("stdout") < kinds.index("stderr") < len(kinds) - 1 and kinds[-1] == "result"
    assert joined(seen, "stdout") == "one\ntwo\n" and joined(seen, "stderr") == "oops\n"
    first = next(at for at, m in seen if m["type"] == "stdout")
    assert seen[-1][0] - first > 0.4  # 'one' came while the program still slept, not with the result
    # The task is a normal task: the same document through GET /result.
    status, document, _ = await api.call("GET", f"/result/{task_id}", token=token)
    assert status == 200 and document == result["result"] and document["verdict"] == "ok"


async def test_large_output_comes_in_chunks_within_the_cap(api):
    token = await api.user("live-big")
    async with await connect(api, token) as ws:
        await start(ws, language="python", code="import sys\nfor i in range(3000): print(i)\nsys.stdout.write('x' * 100000)")
        seen, result = await until_result(ws)
    streamed = joined(seen, "stdout")
    assert streamed == result["result"]["stdout"] and len(streamed.encode()) == 64 * 1024
    assert result["result"]["verdict"] == "output_limit"


async def test_interactive_stdin_answers_a_prompt(api):
    token = await api.user("live-stdin")
    code = "name = input('name? ')\nprint('hi ' + name)\nage = input('age? ')\nprint(name + ' is ' + age)\n"
    async with await connect(api, token) as ws:
        await start(ws, language="python", code=code)
        assert await stdout_until(ws, "name? ") == "name? "
        await ws.send_json({"type": "stdin", "data": "bob\n"})
        assert await stdout_until(ws, "age? ") == "hi bob\nage? "  # in one piece or several
        await ws.send_json({"type": "stdin", "data": "42\n"})
        await ws.send_json({"type": "eof"})
        seen, result = await until_result(ws)
    assert result["result"]["stdout"] == "name? hi bob\nage? bob is 42\n"


async def test_compile_output_streams_and_eof_ends_stdin(api):
    token = await api.user("live-c")
    code = '#include <stdio.h>\nint main(void) { int c, n = 0; while ((c = getchar()) != EOF) n++; printf("%d\\n", n); }\n'
    async with await connect(api, token) as ws:
        await start(ws, language="c", code=code.replace("int main", "#warning careful\nint main"))
        await ws.send_json({"type": "stdin", "data": "abc"})
        await ws.send_json({"type": "eof"})
        seen, result = await until_result(ws)
        assert "careful" in joined(seen, "compile") and joined(seen, "stdout") == "3\n"
        await start(ws, language="c", code="int main(void) { return nope; }")  # the same socket, again
        seen, result = await until_result(ws)
    assert "nope" in joined(seen, "compile") and result["result"]["verdict"] == "compile_error"


async def test_cancel_ends_the_run_and_its_container(api, settings):
    token = await api.user("live-cancel")
    async with await connect(api, token) as ws:
        task_id = await start(ws, language="python", code="print('started', flush=True)\nimport time\ntime.sleep(30)")
        assert (await receive(ws))["data"] == "started\n"
        await ws.send_json({"type": "cancel"})
        seen, result = await until_result(ws)
    assert result["result"]["verdict"] == "cancelled"
    await no_container_soon(task_id)


async def no_container_soon(task_id: str) -> None:
    client = docker.from_env()
    for _ in range(50):
        if not client.api.containers(all=True, filters={"label": f"coderund.task={task_id}"}):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the container of {task_id} is still there")


async def test_a_client_that_disconnects_mid_run_leaves_nothing_running(api):
    token = await api.user("live-gone")
    async with await connect(api, token) as ws:
        task_id = await start(ws, language="python", code="print('started', flush=True)\nwhile True: pass")
        assert (await receive(ws))["data"] == "started\n"
    await no_container_soon(task_id)  # long before its 5 s limit
    result = await api.result(token, task_id)
    assert result["verdict"] == "cancelled"


async def test_refusals(api, settings):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(api, None)
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(api, "not-a-token")
    assert refused.value.status == 401
    token = await api.user("live-bad")
    async with await connect(api, token) as ws:
        await ws.send_str("{nope")
        assert (await receive(ws))["error"] == "invalid_json"
        for message, code in [({"type": "dance"}, "bad_message"), ({"type": "stdin", "data": "x"}, "bad_message"),
                              ([1], "bad_message"), ({"type": "run"}, "bad_message"),
                              ({"type": "run", "task": {"language": "brainfuck", "code": "x"}}, "unsupported_language"),
                              ({"type": "run", "task": {"language": "python"}}, "validation_failed")]:
            await ws.send_json(message)
            answer = await receive(ws)
            assert (answer["type"], answer["error"]) == ("error", code), (message, answer)
        await start(ws, language="python", code="print(1)")  # still serving after all that
        _, result = await until_result(ws)
        assert result["result"]["stdout"] == "1\n"
        await ws.send_str("x" * (ws_module.MAX_BODY_BYTES + 1))
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_a_second_run_waits_for_the_first_and_idle_sockets_close(settings, monkeypatch):
    monkeypatch.setattr(ws_module, "IDLE_S", 1.5)
    async with own_server(settings) as api:
        token = await api.user("live-idle")
        async with await connect(api, token) as ws:
            await start(ws, language="python", code="import time\ntime.sleep(2)\nprint('slept')")  # longer than idle
            await ws.send_json({"type": "run", "task": {"language": "python", "code": "print(2)"}})
            busy = await receive(ws)
            assert (busy["type"], busy["error"]) == ("error", "conflict")
            _, result = await until_result(ws)
            assert result["result"]["stdout"] == "slept\n"  # a run outlives the idle timeout
            closing = await ws.receive(timeout=10)  # then, idle, the socket closes
            assert closing.type == aiohttp.WSMsgType.CLOSE


async def test_live_runs_across_api_and_worker_processes(settings, spawn):
    own = dataclasses.replace(settings, queue=f"{settings.queue}.live", port=free_port())
    spawn(own, "--role", "api")
    spawn(own, "--role", "worker")
    async with api_of(own) as api:
        token = await api.user()
        async with await connect(api, token) as ws:
            await start(ws, language="python", code="print('ready', flush=True)\nprint(input()[::-1])")
            assert await receive(ws) == {"type": "stdout", "data": "ready\n"}
            await ws.send_json({"type": "stdin", "data": "stressed\n"})
            seen, result = await until_result(ws)
    assert joined(seen, "stdout") == "desserts\n" and result["result"]["verdict"] == "ok"
