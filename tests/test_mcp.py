"""`coderund mcp` driven by the official MCP client over stdio, as an agent host starts it, against a live
server with an API key: it lists its tools and calls each; failures come back as tool errors naming why."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from datetime import UTC, datetime

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def api_key(api, prefix: str) -> str:
    token = await api.user(prefix)
    status, body, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "agent"})
    assert status == 201, body
    return body["key"]


def server_params(server: str, token: str, *options: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERUND_")}
    return StdioServerParameters(command=sys.executable, args=["-m", "coderund", "mcp", *options],
                                 env=env | {"CODERUND_SERVER": server, "CODERUND_TOKEN": token, "XDG_CONFIG_HOME": "/nonexistent"})


async def call(server: str, token: str, name: str, arguments: dict | None = None):
    async with stdio_client(server_params(server, token)) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        if name == "":
            return await session.list_tools()
        return await session.call_tool(name, arguments or {})


def structured(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def test_the_tools_are_listed_with_their_arguments(api, server):
    tools = {tool.name: tool for tool in (await call(server, await api_key(api, "mcp"), "")).tools}
    assert {"languages", "run_code"} <= tools.keys()
    assert {"language", "code"} <= set(tools["run_code"].input_schema["required"])
    assert {"stdin", "args"} <= tools["run_code"].input_schema["properties"].keys()


async def test_languages_come_from_the_server_as_one_result(api, server):
    result = await call(server, await api_key(api, "mcp"), "languages")
    assert len(result.content) == 1 and json.loads(result.content[0].text) == result.structured_content
    names = {language["name"] for language in structured(result)["languages"]}
    status, body, _ = await api.call("GET", "/languages")
    assert names == {plugin["name"] for plugin in body["languages"]}


@pytest.mark.parametrize("arguments, expected", [
    ({"language": "python3", "code": "import sys\nprint(input()[::-1], sys.argv[1:])", "stdin": "olleh\n", "args": ["x"]},
     {"verdict": "ok", "exit_code": 0, "stdout": "hello ['x']\n"}),
    ({"language": "c", "code": "int main(void) { return nope; }"}, {"verdict": "compile_error"}),
    ({"language": "python", "code": "raise SystemExit(3)"}, {"verdict": "runtime_error", "exit_code": 3}),
])
async def test_run_code_returns_the_result(api, server, arguments, expected):
    result = structured(await call(server, await api_key(api, "mcp"), "run_code", arguments))
    assert expected.items() <= result.items(), result


async def test_failures_are_tool_errors_that_name_the_reason(api, server):
    refused = await call(server, await api_key(api, "mcp"), "run_code", {"language": "brainfuck", "code": "+"})
    assert refused.is_error and "unsupported_language" in refused.content[0].text
    unknown = await call(server, "crd_not-a-key", "run_code", {"language": "python", "code": "print(1)"})
    assert unknown.is_error and "unauthorized" in unknown.content[0].text
    nowhere = await call("http://127.0.0.1:9", "crd_x", "languages")
    assert nowhere.is_error and "did not answer" in nowhere.content[0].text


async def test_the_sandbox_tools_keep_state_and_move_files_and_figures(api, server):
    """One agent session: create, run twice (state kept), a figure as image content, files both ways, close."""
    key = await api_key(api, "mcp-sbx")
    async with stdio_client(server_params(server, key)) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"sandbox_create", "sandbox_run", "sandbox_write_file", "sandbox_read_file", "sandbox_list_files",
                "sandbox_close"} <= names
        sandbox = structured(await session.call_tool("sandbox_create", {}))
        sid = sandbox["id"]
        first = await session.call_tool("sandbox_run", {"sandbox_id": sid, "code": "x = 20\nprint('set')"})
        assert not first.is_error and json.loads(first.content[0].text)["stdout"] == "set\n"
        second = await session.call_tool("sandbox_run", {"sandbox_id": sid, "code": "x * 2 + 2"})
        assert json.loads(second.content[0].text)["results"] == [{"text/plain": "42"}]
        figure = await session.call_tool("sandbox_run", {"sandbox_id": sid, "code": "import matplotlib.pyplot as plt\n"
                                                         "plt.plot([1, 2]); plt.savefig('plot.png')", "timeout_s": 120})
        images = [item for item in figure.content if item.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/png", figure.content
        assert base64.b64decode(images[0].data)[:4] == b"\x89PNG"
        written = structured(await session.call_tool("sandbox_write_file", {"sandbox_id": sid, "path": "in/a.txt",
                                                                             "content": "héllo"}))
        assert written == {"path": "in/a.txt", "size": len("héllo".encode())}
        binary = base64.b64encode(bytes(range(256))).decode()
        await session.call_tool("sandbox_write_file", {"sandbox_id": sid, "path": "in/b.bin", "content": binary,
                                                       "is_base64": True})
        text = await session.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "in/a.txt"})
        assert text.content[0].text == "héllo"
        raw = await session.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "in/b.bin"})
        assert json.loads(raw.content[0].text)["content_base64"] == binary
        png = await session.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "plot.png"})
        assert png.content[0].type == "image"
        listed = structured(await session.call_tool("sandbox_list_files", {"sandbox_id": sid, "path": "in"}))
        assert [entry["name"] for entry in listed["entries"]] == ["a.txt", "b.bin"]
        missing = await session.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "nope.txt"})
        assert missing.is_error and "not_found" in missing.content[0].text
        assert structured(await session.call_tool("sandbox_close", {"sandbox_id": sid}))["closed"]
        ended = await session.call_tool("sandbox_run", {"sandbox_id": sid, "code": "x"})
        assert ended.is_error and "sandbox_ended" in ended.content[0].text and "deleted" in ended.content[0].text
        js = structured(await session.call_tool("sandbox_create", {"language": "javascript"}))
        await session.call_tool("sandbox_run", {"sandbox_id": js["id"], "code": "let n = 41"})
        kept = await session.call_tool("sandbox_run", {"sandbox_id": js["id"], "code": "console.log('n is', n); n + 1"})
        assert json.loads(kept.content[0].text)["stdout"] == "n is 41\n"
        assert json.loads(kept.content[0].text)["results"] == [{"text/plain": "42"}]
        assert structured(await session.call_tool("sandbox_close", {"sandbox_id": js["id"]}))["closed"]


def seconds_left(document: dict) -> float:
    return (datetime.fromisoformat(document["expires_at"]) - datetime.now(UTC)).total_seconds()


async def test_a_sandbox_it_made_ends_after_its_idle_time_and_each_call_moves_that_end(api, server):
    """An agent host that goes away leaves its sandboxes to the server's clock: they end idle_s after the last call."""
    token = await api.user("mcp-idle")
    status, body, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "agent"})
    key = body["key"]
    status, elsewhere, _ = await api.call("POST", "/sandboxes", token=token, json={"timeout_s": 3600})
    assert status == 201, elsewhere
    async with stdio_client(server_params(server, key, "--sandbox-idle-s", "40")) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        made = structured(await session.call_tool("sandbox_create", {}))
        assert 30 < seconds_left(made) <= 40
        ran = await session.call_tool("sandbox_run", {"sandbox_id": made["id"], "code": "1 + 1", "timeout_s": 30})
        assert not ran.is_error, ran.content
        status, now, _ = await api.call("GET", f"/sandboxes/{made['id']}", token=token)
        assert 60 < seconds_left(now) <= 70  # the idle time after this call, and the run's longest
        await session.call_tool("sandbox_list_files", {"sandbox_id": elsewhere["id"]})
        status, kept, _ = await api.call("GET", f"/sandboxes/{elsewhere['id']}", token=token)
        assert seconds_left(kept) > 3000  # one it did not make keeps the lifetime it was given
    async with stdio_client(server_params(server, key, "--sandbox-idle-s", "1")) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        short = structured(await session.call_tool("sandbox_create", {}))
    # The host is gone: the sandbox ends on its own, within the worker's next looks at its rows.
    for _ in range(300):
        status, gone, _ = await api.call("GET", f"/sandboxes/{short['id']}", token=token)
        if status == 410:
            break
        await asyncio.sleep(0.1)
    assert (status, gone["error"]) == (410, "sandbox_ended") and "expired" in gone["message"]
    await api.call("DELETE", f"/sandboxes/{elsewhere['id']}", token=token)
    await api.call("DELETE", f"/sandboxes/{made['id']}", token=token)


def test_the_idle_time_is_a_setting_with_a_default():
    from coderund.client import ClientError
    from coderund.mcp_server import MCP_SANDBOX_IDLE_S, sandbox_idle_s

    assert sandbox_idle_s(None, {}) == MCP_SANDBOX_IDLE_S == 600
    assert sandbox_idle_s(None, {"CODERUND_MCP_SANDBOX_IDLE_S": "120"}) == 120
    assert sandbox_idle_s(30, {"CODERUND_MCP_SANDBOX_IDLE_S": "120"}) == 30
    for flag, environ in ((0, {}), (None, {"CODERUND_MCP_SANDBOX_IDLE_S": "ten"}), (None, {"CODERUND_MCP_SANDBOX_IDLE_S": "-1"})):
        with pytest.raises(ClientError, match="is not a number of seconds"):
            sandbox_idle_s(flag, environ)
