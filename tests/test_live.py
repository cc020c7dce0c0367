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


async def start(ws: aiohttp.ClientWebSocketResponse, tty: bool | None = None, **task: Any) -> str:
    await ws.send_json({"type": "run", "task": task} | ({} if tty is None else {"tty": tty}))
    accepted = await receive(ws)
    assert accepted["type"] == "accepted", accepted
    return accepted["task_id"]


async def output_until(ws: aiohttp.ClientWebSocketResponse, end: str, kind: str = "stdout") -> str:
    """The program's output up to a prompt: it waits for an answer, so nothing else comes meanwhile."""
    text = ""
    while not text.endswith(end):
        message = await receive(ws)
        assert message["type"] == kind, message
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


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipes"])
async def test_interactive_stdin_answers_a_prompt(api, tty):
    """Python's input() flushes its prompt either way. On a terminal CPython writes the prompt to
    stderr (its own choice when stdin and stdout are terminals); with pipes, to stdout."""
    token = await api.user("live-stdin")
    code = "name = input('name? ')\nprint('hi ' + name)\nage = input('age? ')\nprint(name + ' is ' + age)\n"
    prompts = "stderr" if tty else "stdout"
    async with await connect(api, token) as ws:
        await start(ws, tty=tty, language="python", code=code)
        assert await output_until(ws, "name? ", prompts) == "name? "
        await ws.send_json({"type": "stdin", "data": "bob\n"})
        if tty:
            assert await output_until(ws, "hi bob\n") == "hi bob\n"  # in one piece or several
            assert await output_until(ws, "age? ", "stderr") == "age? "
        else:
            assert await output_until(ws, "age? ") == "hi bob\nage? "
        await ws.send_json({"type": "stdin", "data": "42\n"})
        await ws.send_json({"type": "eof"})
        seen, result = await until_result(ws)
    document = result["result"]
    if tty:
        assert (document["stdout"], document["stderr"]) == ("hi bob\nbob is 42\n", "name? age? ")
    else:
        assert (document["stdout"], document["stderr"]) == ("name? hi bob\nage? bob is 42\n", "")


THREE_LINES = {
    "python": "import time\nfor word in ('one', 'two', 'three'):\n    print(word)\n    time.sleep(1)\n",
    "c": '#include <stdio.h>\n#include <unistd.h>\nint main(void) {\n    const char *words[] = {"one", "two", "three"};\n'
         '    for (int i = 0; i < 3; i++) { printf("%s\\n", words[i]); sleep(1); }\n}\n',
}


@pytest.mark.parametrize("language", THREE_LINES)
async def test_a_terminal_shows_each_line_as_the_program_prints_it(runtime_api, language):
    """Live runs give the program a terminal: lines printed a second apart, with no flush, arrive as
    printed: no message carries two of them, and the first and the last come about as far apart as
    the program slept between them (two seconds). With pipes ("tty": false) the runtime keeps them
    until it exits: they come in one message."""
    token = await runtime_api.user("live-lines")
    async with await connect(runtime_api, token) as ws:
        await start(ws, language=language, code=THREE_LINES[language])
        seen, result = await until_result(ws)
        await start(ws, tty=False, language=language, code=THREE_LINES[language])
        piped, _ = await until_result(ws)
    assert result["result"]["verdict"] == "ok" and joined(seen, "stdout") == "one\ntwo\nthree\n"
    printed = [(at, m["data"]) for at, m in seen if m["type"] == "stdout"]
    assert all(data.count("\n") <= 1 for _, data in printed), printed  # a runtime may write a line in pieces
    ends = [at for at, data in printed if data.endswith("\n")]
    assert len(ends) == 3 and ends[2] - ends[0] >= 0.75 * 2, printed
    assert [m["data"] for _, m in piped if m["type"] == "stdout"] == ["one\ntwo\nthree\n"]


PROMPT_C = ('#include <stdio.h>\n#include <unistd.h>\nint main(void) {\n    int n;\n'
            '    printf("terminal: stdin %d, stdout %d\\n", isatty(0), isatty(1));\n    printf("n? ");\n'
            '    if (scanf("%d", &n) != 1) return 1;\n    printf("%d\\n", 2 * n);\n}\n')


async def test_a_c_prompt_without_a_newline_shows_before_the_input(runtime_api):
    """stdio flushes a terminal's line-buffered stdout when the program reads its terminal: the prompt
    comes before any input is sent, and the program waits for it. gVisor's terminals give no end of
    file, so there stdin stays a pipe (stdout is the terminal): lines come as printed, and the prompt
    with the output that follows the input."""
    token = await runtime_api.user("live-prompt")
    async with await connect(runtime_api, token) as ws:
        await start(ws, language="c", code=PROMPT_C)
        if runtime_api.runtime == "runsc":
            assert await output_until(ws, "\n") == "terminal: stdin 0, stdout 1\n"
            await ws.send_json({"type": "stdin", "data": "21\n"})
            seen, result = await until_result(ws)
            assert joined(seen, "stdout") == "n? 42\n"
        else:
            assert await output_until(ws, "n? ") == "terminal: stdin 1, stdout 1\nn? "
            await ws.send_json({"type": "stdin", "data": "21\n"})
            seen, result = await until_result(ws)
            assert joined(seen, "stdout") == "42\n"
    assert result["result"]["stdout"].endswith("n? 42\n")


COUNT_C = '#include <stdio.h>\nint main(void) { int c, n = 0; while ((c = getchar()) != EOF) n++; printf("%d\\n", n); }\n'


async def test_eof_ends_the_input_with_a_terminal_too(runtime_api):
    """A line begun and then eof: the program reads the line, then an end of file (the terminal's
    EOF character under runc; the pipe's end under gVisor)."""
    token = await runtime_api.user("live-eof")
    async with await connect(runtime_api, token) as ws:
        await start(ws, language="c", code=COUNT_C)
        await ws.send_json({"type": "stdin", "data": "one\ntwo"})
        await ws.send_json({"type": "eof"})
        seen, result = await until_result(ws)
    assert result["result"]["verdict"] == "ok" and joined(seen, "stdout") == "7\n"


async def test_compile_output_streams_and_eof_ends_stdin(api):
    token = await api.user("live-c")
    async with await connect(api, token) as ws:
        await start(ws, language="c", code=COUNT_C.replace("int main", "#warning careful\nint main"))
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
        assert await output_until(ws, "started\n") == "started\n"
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
        assert await output_until(ws, "started\n") == "started\n"
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
                              ({"type": "run", "task": {"language": "python"}}, "validation_failed"),
                              ({"type": "run", "task": {"language": "python", "code": "1"}, "tty": "yes"}, "bad_message")]:
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
            assert await output_until(ws, "ready\n") == "ready\n"
            await ws.send_json({"type": "stdin", "data": "stressed\n"})
            seen, result = await until_result(ws)
    assert joined(seen, "stdout") == "desserts\n" and result["result"]["verdict"] == "ok"
