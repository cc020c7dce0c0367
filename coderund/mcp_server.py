"""`coderund mcp`: a Model Context Protocol server over stdio, so that an agent host adds coderund with one
command line. It is a client of a coderund server, as `coderund run` is: it talks HTTP to CODERUND_SERVER
with the API key in CODERUND_TOKEN (or the stored login). All it keeps is the ids of the sandboxes it made:
each lives until a short idle time after its last call, a lifetime the server holds, so a host that goes
away without closing them leaves them to end on their own.
"""
from __future__ import annotations

import base64
import binascii
import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

from . import __version__
from .client import MCP_SANDBOX_IDLE_S, ClientError, Credentials, call, load_credentials

RESULT_WAIT_S = 30  # per request: the server holds the answer this long, then we ask again
MAX_POLLS = 20  # a task still unfinished after about ten minutes is the server's trouble, said as such
RESULT_KEYS = ("verdict", "exit_code", "signal", "stdout", "stderr", "compile_output", "truncated", "time_ms",
               "wall_ms", "memory_kb", "language")


class Coderund:
    """The few HTTP calls the tools make, each failure a ToolError that names the server's reason."""

    def __init__(self, credentials: Credentials, sandbox_idle_s: int = MCP_SANDBOX_IDLE_S) -> None:
        self.server = credentials.server
        self.headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else {}
        self.sandbox_idle_s = sandbox_idle_s
        self.made: set[str] = set()  # the sandboxes this server made, whose lifetime it keeps short

    async def create_sandbox(self, body: dict[str, Any]) -> dict[str, Any]:
        sandbox = await self.ask("POST", "/sandboxes", json={**body, "timeout_s": self.sandbox_idle_s})
        self.made.add(sandbox["id"])
        return sandbox

    async def keep(self, sandbox_id: str, busy_s: float = 0) -> None:
        """Moves a sandbox this server made to end its idle time after this call (and busy_s, a run's
        longest); a sandbox made elsewhere keeps the lifetime it was given."""
        if sandbox_id in self.made:
            await self.ask("POST", f"/sandboxes/{quote(sandbox_id)}/timeout",
                           json={"timeout_s": self.sandbox_idle_s + math.ceil(busy_s)})

    async def ask(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with aiohttp.ClientSession(headers=self.headers) as session:
                status, body = await call(session, method, self.server + path, **kwargs)
        except (aiohttp.ClientError, ValueError) as e:
            raise ToolError(f"coderund server {self.server} did not answer properly: {e}") from None
        return _checked(status, body)

    async def read(self, path: str) -> bytes:
        """A raw answer (a sandbox's file); an error answer is JSON as any other."""
        try:
            async with aiohttp.ClientSession(headers=self.headers) as session, session.get(self.server + path) as response:
                if response.status < 400:
                    return await response.read()
                _checked(response.status, await response.json(content_type=None))
        except (aiohttp.ClientError, ValueError) as e:
            raise ToolError(f"coderund server {self.server} did not answer properly: {e}") from None
        raise ToolError("unreachable")

    async def run(self, task: dict[str, Any]) -> dict[str, Any]:
        body = await self.ask("POST", f"/task?wait={RESULT_WAIT_S}", json=task)
        for _ in range(MAX_POLLS):
            if "verdict" in body:
                return {key: body.get(key) for key in RESULT_KEYS}
            body = await self.ask("GET", f"/result/{body['task_id']}?wait={RESULT_WAIT_S}")
        raise ToolError(f"task {body.get('task_id')} has not finished; ask GET /result/{body.get('task_id')} later")


def _checked(status: int, body: Any) -> Any:
    if status >= 400:
        if isinstance(body, dict) and "error" in body:
            raise ToolError(f"{body['error']}: {body.get('message', '')}")
        raise ToolError(f"coderund server answered HTTP {status}")
    return body


IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg"}
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


def run_content(outcome: dict[str, Any]) -> list[Any]:
    """A sandbox run as MCP content: its text (structured) first, then each image it returned as an image."""
    images, results = [], []
    for bundle in outcome["results"]:
        kind = next((mime for mime in IMAGE_TYPES if mime in bundle), None)
        if kind:
            images.append(Image(data=base64.b64decode(bundle[kind]), format=IMAGE_TYPES[kind]))
            results.append({"text/plain": bundle.get("text/plain", ""), kind: "(the image content below)"})
        else:
            results.append(bundle)
    return [{**outcome, "results": results}, *images]


def make_server(coderund: Coderund) -> MCPServer:
    server = MCPServer("coderund", version=__version__,
                       instructions="Runs untrusted code in locked-down sandboxes on a coderund server.")

    @server.tool(description="The languages the server runs: name, version, aliases, entry file.")
    async def languages() -> dict[str, list[dict[str, Any]]]:
        found = await coderund.ask("GET", "/languages")
        return {"languages": [{key: plugin.get(key) for key in ("name", "version", "aliases", "compiled", "entry_file")}
                              for plugin in found["languages"]]}

    @server.tool(description="Runs a program once in a fresh sandbox (no network) and returns its verdict, exit "
                             "code, stdout, stderr and compiler output. language is a name or alias from languages.")
    async def run_code(language: str, code: str, stdin: str = "", args: list[str] | None = None) -> dict[str, Any]:
        return await coderund.run({"language": language, "code": code, "stdin": stdin, "args": args or []})

    @server.tool(description="Creates a stateful sandbox (language python, the default: with numpy, pandas and "
                             "matplotlib; or javascript: Node 18; bash beside either; no network) that keeps variables, "
                             "imports and files between sandbox_run calls until sandbox_close, or until it has had no "
                             f"call for {coderund.sandbox_idle_s} s. Returns its id.")
    async def sandbox_create(language: str = "python", memory_mb: int | None = None,
                             metadata: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"language": language, "memory_mb": memory_mb, "metadata": metadata}
        return await coderund.create_sandbox({k: v for k, v in body.items() if v is not None})

    @server.tool(description="Runs code in a sandbox's persistent interpreter: language python (variables and "
                             "imports persist, the last expression's value is returned, matplotlib figures come back "
                             "as images), javascript (globals and let/const persist, the completion value is returned, "
                             "top-level await works) or bash (cwd and environment persist); by default the sandbox's own.",
                 structured_output=False)
    async def sandbox_run(sandbox_id: str, code: str, language: str | None = None, timeout_s: float = 60) -> list[Any]:
        body = {"code": code, "language": language, "timeout_s": timeout_s}
        await coderund.keep(sandbox_id, timeout_s)
        outcome = await coderund.ask("POST", f"/sandboxes/{quote(sandbox_id)}/run",
                                     json={k: v for k, v in body.items() if v is not None})
        return run_content(outcome)

    @server.tool(description="Writes a file in the sandbox's work folder (relative path). content is text, or "
                             "base64 when is_base64 is true.")
    async def sandbox_write_file(sandbox_id: str, path: str, content: str, is_base64: bool = False) -> dict[str, Any]:
        try:
            data = base64.b64decode(content, validate=True) if is_base64 else content.encode()
        except binascii.Error:
            raise ToolError("validation_failed: content is not base64") from None
        await coderund.keep(sandbox_id)
        return await coderund.ask("PUT", f"/sandboxes/{quote(sandbox_id)}/files/{quote(path)}", data=data)

    @server.tool(description="Reads a file from the sandbox's work folder: text as text, a PNG or JPEG as an image, "
                             "other bytes as base64.", structured_output=False)
    async def sandbox_read_file(sandbox_id: str, path: str) -> Any:
        await coderund.keep(sandbox_id)
        data = await coderund.read(f"/sandboxes/{quote(sandbox_id)}/files/{quote(path)}")
        kind = next((name for signature, name in SIGNATURES.items() if data.startswith(signature)), None)
        if kind:
            return Image(data=data, format=kind)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return {"path": path, "size": len(data), "content_base64": base64.b64encode(data).decode()}

    @server.tool(description="Lists a folder of the sandbox's work folder: names, kinds, sizes.")
    async def sandbox_list_files(sandbox_id: str, path: str = ".") -> dict[str, Any]:
        await coderund.keep(sandbox_id)
        return await coderund.ask("GET", f"/sandboxes/{quote(sandbox_id)}/files", params={"path": path})

    @server.tool(description="Ends a sandbox now; its state and files are gone.")
    async def sandbox_close(sandbox_id: str) -> dict[str, Any]:
        await coderund.ask("DELETE", f"/sandboxes/{quote(sandbox_id)}")
        coderund.made.discard(sandbox_id)
        return {"sandbox_id": sandbox_id, "closed": True}

    return server


def main(args: dict[str, Any]) -> int:
    try:
        credentials = load_credentials(args.get("server"))
        idle_s = sandbox_idle_s(args.get("sandbox_idle_s"), os.environ)
    except ClientError as e:
        raise SystemExit(f"coderund: {e}") from None
    make_server(Coderund(credentials, idle_s)).run("stdio")
    return 0


def sandbox_idle_s(flag: int | None, environ: Mapping[str, str]) -> int:
    """--sandbox-idle-s over CODERUND_MCP_SANDBOX_IDLE_S over the default: a whole number of seconds, at least 1."""
    raw = flag if flag is not None else environ.get("CODERUND_MCP_SANDBOX_IDLE_S", MCP_SANDBOX_IDLE_S)
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ClientError(f"the sandboxes' idle time {raw!r} is not a number of seconds (1 or more)")
    return seconds
