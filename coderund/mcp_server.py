"""`coderund mcp`: a Model Context Protocol server over stdio, so that an agent host adds coderund with one
command line. It is a client of a coderund server, as `coderund run` is: it talks HTTP to CODERUND_SERVER
with the API key in CODERUND_TOKEN (or the stored login), and holds no state of its own.
"""
from __future__ import annotations

from typing import Any

import aiohttp
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from . import __version__
from .client import ClientError, Credentials, call, load_credentials

RESULT_WAIT_S = 30  # per request: the server holds the answer this long, then we ask again
MAX_POLLS = 20  # a task still unfinished after about ten minutes is the server's trouble, said as such
RESULT_KEYS = ("verdict", "exit_code", "signal", "stdout", "stderr", "compile_output", "truncated", "time_ms",
               "wall_ms", "memory_kb", "language")


class Coderund:
    """The few HTTP calls the tools make, each failure a ToolError that names the server's reason."""

    def __init__(self, credentials: Credentials) -> None:
        self.server = credentials.server
        self.headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else {}

    async def ask(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with aiohttp.ClientSession(headers=self.headers) as session:
                status, body = await call(session, method, self.server + path, **kwargs)
        except (aiohttp.ClientError, ValueError) as e:
            raise ToolError(f"coderund server {self.server} did not answer properly: {e}") from None
        if status >= 400:
            if isinstance(body, dict) and "error" in body:
                raise ToolError(f"{body['error']}: {body.get('message', '')}")
            raise ToolError(f"coderund server answered HTTP {status}")
        return body

    async def run(self, task: dict[str, Any]) -> dict[str, Any]:
        body = await self.ask("POST", f"/task?wait={RESULT_WAIT_S}", json=task)
        for _ in range(MAX_POLLS):
            if "verdict" in body:
                return {key: body.get(key) for key in RESULT_KEYS}
            body = await self.ask("GET", f"/result/{body['task_id']}?wait={RESULT_WAIT_S}")
        raise ToolError(f"task {body.get('task_id')} has not finished; ask GET /result/{body.get('task_id')} later")


def make_server(coderund: Coderund) -> MCPServer:
    server = MCPServer("coderund", version=__version__,
                       instructions="Runs untrusted code in locked-down sandboxes on a coderund server.")

    @server.tool(description="The languages the server runs: name, version, aliases, entry file.")
    async def languages() -> list[dict[str, Any]]:
        found = await coderund.ask("GET", "/languages")
        return [{key: plugin.get(key) for key in ("name", "version", "aliases", "compiled", "entry_file")}
                for plugin in found["languages"]]

    @server.tool(description="Runs a program once in a fresh sandbox (no network) and returns its verdict, exit "
                             "code, stdout, stderr and compiler output. language is a name or alias from languages.")
    async def run_code(language: str, code: str, stdin: str = "", args: list[str] | None = None) -> dict[str, Any]:
        return await coderund.run({"language": language, "code": code, "stdin": stdin, "args": args or []})

    return server


def main(args: dict[str, Any]) -> int:
    try:
        credentials = load_credentials(args.get("server"))
    except ClientError as e:
        raise SystemExit(f"coderund: {e}") from None
    make_server(Coderund(credentials)).run("stdio")
    return 0
