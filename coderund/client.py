"""The command-line client: `coderund run FILE`, `coderund login`, `coderund logout`.

It talks to a coderund server over HTTP and the /ws WebSocket only, so it works against a local
stack and a remote server alike. The token lives in the user's config folder, readable by them alone.
"""
from __future__ import annotations

import argparse
import asyncio
import codecs
import getpass
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

DEFAULT_SERVER = "http://127.0.0.1:8080"
# `coderund mcp`: a sandbox it made ends this long after its last call, so an agent host that goes away
# leaves nothing running for long.
MCP_SANDBOX_IDLE_S = 600
# Exit codes of `run` beyond the program's own (and 128 + N for a program killed by signal N).
EXIT_CODES = {"compile_error": 100, "time_limit": 101, "memory_limit": 102, "output_limit": 103, "cancelled": 104,
              "internal_error": 105}
EXIT_USAGE = 2  # the client's own trouble: bad arguments, not logged in, no server
EXIT_PLATFORM = EXIT_CODES["internal_error"]
READ_CHUNK = 65536


class ClientError(Exception):
    """Trouble of the client's own, said in one line."""


@dataclass
class Credentials:
    server: str
    token: str | None


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "coderund" / "credentials.json"


def load_credentials(server: str | None = None) -> Credentials:
    """--server over CODERUND_SERVER over the stored server; CODERUND_TOKEN over the stored token."""
    stored: dict[str, Any] = {}
    path = credentials_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ClientError(f"{path} is unreadable; run `coderund login` again") from None
    server = server or os.environ.get("CODERUND_SERVER") or stored.get("server") or DEFAULT_SERVER
    return Credentials(server.rstrip("/"), os.environ.get("CODERUND_TOKEN") or stored.get("token"))


def save_credentials(credentials: Credentials) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 before anything is written: the token is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"server": credentials.server, "token": credentials.token}, file)
    return path


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = commands.add_parser("run", help="run a file on a coderund server, output live")
    run.add_argument("file", metavar="FILE", help="the program's source; its extension names the language")
    run.add_argument("--language", "-l", help="language or alias (default: guessed from FILE's extension)")
    run.add_argument("--stdin", metavar="FILE|-", help="the program's stdin, all of it (default: this terminal, live)")
    run.add_argument("--arg", action="append", default=[], metavar="A", help="an argument for the program (repeat)")
    run.add_argument("--time-ms", type=int, help="time limit")
    run.add_argument("--memory-mb", type=int, help="memory limit")
    run.add_argument("--server", help=f"server URL (CODERUND_SERVER; default: the one logged in to, else {DEFAULT_SERVER})")
    run.add_argument("--json", action="store_true", help="print the result document instead of the output")
    login = commands.add_parser("login", help="log in and keep the token in your config folder (mode 0600)")
    login.add_argument("--server", help="server URL")
    login.add_argument("--username", "-u", help="default: asked")
    login.add_argument("--register", action="store_true", help="create the account first")
    logout = commands.add_parser("logout", help="end the session and forget the token")
    logout.add_argument("--server", help="server URL")


def main(command: str, args: dict[str, Any]) -> int:
    try:
        return asyncio.run(COMMANDS[command](args))
    except ClientError as e:
        print(f"coderund: {e}", file=sys.stderr)
        return EXIT_USAGE
    except aiohttp.ClientError as e:
        print(f"coderund: cannot reach the server: {e}", file=sys.stderr)
        return EXIT_USAGE


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        body = await response.json(content_type=None) if response.status != 204 else None
        return response.status, body


async def login(args: dict[str, Any]) -> int:
    server = load_credentials(args.get("server")).server
    username = args.get("username") or input("username: ")
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    credentials = {"username": username, "password": password}
    async with aiohttp.ClientSession() as session:
        if args.get("register"):
            status, body = await call(session, "POST", f"{server}/register", json=credentials)
            if status != 201:
                raise ClientError(f"registering failed: {body.get('message', status)}")
        status, body = await call(session, "POST", f"{server}/login", json=credentials)
    if status != 200:
        raise ClientError(f"login failed: {body.get('message', status)}")
    path = save_credentials(Credentials(server, body["token"]))
    print(f"logged in to {server} as {username}; token in {path}", file=sys.stderr)
    return 0


async def logout(args: dict[str, Any]) -> int:
    credentials = load_credentials(args.get("server"))
    if credentials.token:
        async with aiohttp.ClientSession() as session:
            await call(session, "POST", f"{credentials.server}/logout",
                        headers={"Authorization": f"Bearer {credentials.token}"})
    credentials_path().unlink(missing_ok=True)
    print("logged out", file=sys.stderr)
    return 0


async def run(args: dict[str, Any]) -> int:
    credentials = load_credentials(args.get("server"))
    if not credentials.token:
        raise ClientError("not logged in: run `coderund login` (or set CODERUND_TOKEN)")
    source = Path(args["file"])
    try:
        code = source.read_text()
        stdin = None if args.get("stdin") is None else (
            sys.stdin.read() if args["stdin"] == "-" else Path(args["stdin"]).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(str(e)) from None
    headers = {"Authorization": f"Bearer {credentials.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        language = args.get("language") or await _guess_language(session, credentials.server, source)
        task: dict[str, Any] = {"language": language, "code": code, "args": args.get("arg") or []}
        limits = {name: args[name] for name in ("time_ms", "memory_mb") if args.get(name) is not None}
        if limits:
            task["limits"] = limits
        if stdin is not None:
            task["stdin"] = stdin
        try:
            async with session.ws_connect(f"{credentials.server}/ws") as ws:
                result = await _live_run(ws, task, live_stdin=stdin is None, show=not args.get("json"))
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 401:
                raise ClientError("the server does not know this token: run `coderund login`") from None
            raise
    if args.get("json"):
        print(json.dumps(result, indent=2))
    else:
        print(_summary(result), file=sys.stderr)
    return exit_code(result)


async def _guess_language(session: aiohttp.ClientSession, server: str, source: Path) -> str:
    status, body = await call(session, "GET", f"{server}/languages")
    return language_of(source.name, body.get("languages", []))


def language_of(file_name: str, languages: list[dict[str, Any]]) -> str:
    """The language a file's extension names, case-insensitively: one whose extensions, name or aliases
    it is (x.cc, x.R, x.hs); a ClientError when none is, or several are (x.m: octave or objective-c)."""
    suffix = PurePosixPath(file_name).suffix.lower()
    matches = [lang["name"] for lang in languages
               if suffix and (suffix in lang["extensions"] or suffix[1:] in (lang["name"], *lang["aliases"]))]
    if len(matches) > 1:
        raise ClientError(f"{file_name} could be {', '.join(matches[:-1])} or {matches[-1]}: pass --language")
    if not matches:
        raise ClientError(f"cannot tell the language of {file_name}: pass --language")
    return matches[0]


async def _live_run(ws: aiohttp.ClientWebSocketResponse, task: dict[str, Any], *, live_stdin: bool,
                    show: bool) -> dict[str, Any]:
    """Sends the run, forwards our stdin while it lasts, shows output as it comes; the result."""
    await ws.send_json({"type": "run", "task": task})
    outputs = {"stdout": sys.stdout, "stderr": sys.stderr, "compile": sys.stderr}
    forwarding: asyncio.Task[None] | None = None
    try:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(message.data)
            kind = event["type"]
            if kind == "accepted":
                forwarding = asyncio.create_task(_forward_stdin(ws) if live_stdin else ws.send_json({"type": "eof"}))
            elif kind in outputs and show:
                outputs[kind].write(event["data"])
                outputs[kind].flush()
            elif kind == "result":
                return event["result"]
            elif kind == "error":
                raise ClientError(f"{event['error']}: {event['message']}")
    finally:
        if forwarding:
            forwarding.cancel()
    raise ClientError("the server closed the connection before the result")


async def _forward_stdin(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Our stdin, as it comes, to the program; then eof. Read in a daemon thread: a terminal read
    must not keep the process alive once the result is in."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                data = os.read(sys.stdin.fileno(), READ_CHUNK)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(chunks.put_nowait, data)
            if not data:
                return

    threading.Thread(target=read, daemon=True).start()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while data := await chunks.get():
        await ws.send_json({"type": "stdin", "data": decoder.decode(data)})
    await ws.send_json({"type": "eof"})


def exit_code(result: dict[str, Any]) -> int:
    """The program's own exit code, 128 + N for signal N, else the verdict's code."""
    verdict = result.get("verdict")
    if verdict in ("ok", "runtime_error"):
        if result.get("signal"):
            return 128 + int(result["signal"])
        return int(result.get("exit_code") or 0)
    return EXIT_CODES.get(verdict, EXIT_PLATFORM)


def _summary(result: dict[str, Any]) -> str:
    parts = [result.get("verdict", "?")]
    if result.get("exit_code") is not None:
        parts.append(f"exit {result['exit_code']}")
    if result.get("signal"):
        parts.append(f"signal {result['signal']}")
    parts += [f"{result.get('time_ms') or 0} ms cpu", f"{result.get('wall_ms') or 0} ms wall",
              f"{(result.get('memory_kb') or 0) / 1024:.1f} MB"]
    if result.get("truncated"):
        parts.append("output truncated")
    return "coderund: " + " · ".join(parts)


COMMANDS = {"run": run, "login": login, "logout": logout}
