"""envd's calls (the E2B SDKs' commands and files inside a sandbox) as the hub's operations, and the
hub's answers as envd's messages. Pure: no I/O.

E2B's sandboxes have a user `user` whose home, /home/user, is the default working folder. A coderund
sandbox's files live in its work folder, where its user (nobody) may write; a sandbox made through
E2B's API has it at /home/user, and is HOME there too. E2B's paths under /home/user (and relative
ones, and ~) name the work folder whatever its place (a sandbox made through coderund's own API has
it at /box), and an answer names it /home/user. Other absolute paths (/tmp, /etc) cannot be reached
by the file calls, though a command may start in any folder its user may enter. Every call
runs as the sandbox's unprivileged user, whichever `user` it asks for: no call gets root.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import posixpath
import re
import stat as stats
from collections.abc import Iterable, Mapping
from typing import Any

from ...admission import MAX_COMMAND_CHARS
from ...errors import Unauthorized, ValidationFailed
from ...sandbox_requests import E2B_HOME as HOME
from ...sandbox_requests import (MAX_FILE_METADATA, MAX_FILE_METADATA_KEY, MAX_FILE_METADATA_VALUE, MAX_LIST_DEPTH,
                                MAX_PATH_CHARS, MAX_RUN_S, WORK_FOLDER, file_path, parse_command)
from .connect import ConnectError

ENVD_PORT = 49983
OWNERS = {0: "root", 65534: "user"}  # the sandbox's user is nobody, which E2B's conventions call user
KINDS = {"file": 1, "folder": 2, "symlink": 3}  # FileType's numbers
SIGNALS = {9: 9, 15: 15}  # SIGKILL, SIGTERM; unspecified kills, as envd does
MAX_TERMINAL = 65535  # a PTY's cols and rows, as a winsize holds them
EVENT_TYPES = {"create": 1, "write": 2, "remove": 3, "rename": 4, "chmod": 5}  # EventType's numbers
METADATA_HEADER = "x-metadata-"
METADATA_KEY = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")  # an HTTP token: a header's name
METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def work_path(path: str) -> str:
    """An E2B path as a path in the work folder (relative, "." for the folder itself)."""
    if not isinstance(path, str):
        raise ConnectError("invalid_argument", "A path must be a string.")
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    if path.startswith("/"):
        root = _root_of(path)
        if root is None:
            raise ConnectError("invalid_argument", f"{path[:200]!r} is outside {HOME}: a coderund sandbox's files live"
                                                   f" in its work folder, which E2B's paths under {HOME} name.")
        path = path[len(root):]
    try:
        return file_path(path)
    except ValidationFailed as e:
        raise ConnectError("invalid_argument", e.message) from None


def _root_of(path: str) -> str | None:
    """The work folder's place that an absolute path lies in, if any."""
    return next((root for root in (HOME, WORK_FOLDER) if path == root or path.startswith(root + "/")), None)


def command_cwd(path: str) -> str:
    """A command's working folder: in the work folder as work_path() names it, or another absolute
    folder (E2B's cwd="/"), where the command may go itself: it runs as the sandbox's user there."""
    if not isinstance(path, str) or not path.startswith("/") or _root_of(posixpath.normpath(path)) is not None:
        return work_path(path)
    if "\0" in path or len(path) > MAX_PATH_CHARS:
        raise ConnectError("invalid_argument", f"A working folder has no NUL and at most {MAX_PATH_CHARS} characters.")
    return posixpath.normpath(path)


def e2b_path(path: str) -> str:
    """A work folder's path (relative, or absolute as the hub names a command's cwd) as E2B names it;
    an absolute path outside it (a command's cwd) as it is."""
    if root := _root_of(path):
        path = path[len(root):]
    elif path.startswith("/"):
        return path
    path = path.strip("/")
    return f"{HOME}/{path}" if path and path != "." else HOME


def command_op(request: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """process.Process/Start's request as the hub's command, announced by its pid; its stdin open
    only if asked. A command runs at most MAX_RUN_S, or the call's own timeout when shorter."""
    config = request.get("process") or {}
    if not config.get("cmd"):
        raise ConnectError("invalid_argument", "'process.cmd' names the program to run.")
    limit = MAX_RUN_S if not timeout_s else min(timeout_s, MAX_RUN_S)
    words = [config["cmd"], *config.get("args", [])]
    if sum(map(len, words)) > MAX_COMMAND_CHARS:
        raise ConnectError("invalid_argument", f"The command line is over {MAX_COMMAND_CHARS // 1024} KiB.")
    try:
        parsed = parse_command({"cmd": words, "env": config.get("envs", {}), "timeout_s": max(limit, 0.1)},
                               word_chars=MAX_COMMAND_CHARS)
    except ValidationFailed as e:
        raise ConnectError("invalid_argument", e.message.replace("'cmd'", "'process.cmd' and 'args'")
                           .replace("'env'", "'process.envs'")) from None
    op = {"op": "command", "cmd": list(parsed.cmd), "cwd": command_cwd(config.get("cwd") or HOME), "env": parsed.env,
          "timeout_s": parsed.timeout_s, "announce": True, "open_stdin": bool(request.get("stdin"))}
    if request.get("tag"):
        op["tag"] = request["tag"]
    if request.get("pty") is not None:
        op["terminal"] = terminal_size(request["pty"])
    return op


def terminal_size(pty: dict[str, Any]) -> dict[str, int]:
    """A PTY's size as the hub's terminal: E2B's cols and rows, each 1 to 65535 (80 by 24 unsaid)."""
    size = pty.get("size") or {}
    cols, rows = size.get("cols") or 80, size.get("rows") or 24
    if not (1 <= cols <= MAX_TERMINAL and 1 <= rows <= MAX_TERMINAL):
        raise ConnectError("invalid_argument", f"A PTY's cols and rows are each from 1 to {MAX_TERMINAL}.")
    return {"cols": cols, "rows": rows}


def update_op(request: dict[str, Any]) -> dict[str, Any] | None:
    """process.Process/Update's request as the hub's resize; None if it changes nothing."""
    if request.get("pty") is None:
        return None
    return {"op": "resize", **selector(request), "terminal": terminal_size(request["pty"])}


def process_events(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One hub event of a command as StartResponse messages (ProcessEvent in `event`)."""
    kind = event.get("type")
    if kind == "start":
        return [{"event": {"start": {"pid": event["pid"]}}}]
    if kind in ("stdout", "stderr"):
        return [{"event": {"data": {kind: event["text"].encode()}}}]
    if kind == "pty":
        return [{"event": {"data": {"pty": base64.b64decode(event["data"])}}}]
    if kind != "end":
        return []
    if event.get("timed_out"):
        raise ConnectError("deadline_exceeded", "The command ran past its timeout and was killed.")
    end: dict[str, Any]
    if event.get("exit_code") is not None:
        end = {"exit_code": event["exit_code"], "exited": True, "status": f"exit status {event['exit_code']}"}
    else:
        number = event.get("signal") or 9
        name = {9: "killed", 15: "terminated"}.get(number, f"signal {number}")
        end = {"exit_code": -1, "exited": False, "status": f"signal: {name}"}
    if event.get("truncated"):
        end["error"] = "output past 1 MiB on stdout or stderr was dropped"
    return [{"event": {"end": end}}]


def selector(request: dict[str, Any]) -> dict[str, Any]:
    """A ProcessSelector as the hub names a command: its pid or its tag."""
    chosen = request.get("process") or {}
    if chosen.get("pid") is not None:
        return {"pid": chosen["pid"]}
    if chosen.get("tag"):
        return {"tag": chosen["tag"]}
    raise ConnectError("invalid_argument", "'process' names a process by its pid or its tag.")


def input_op(request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """SendInput's request: its bytes for the command's stdin, or its terminal's (pty)."""
    given = request.get("input") or {}
    return {"op": "input", **selector(request)}, given.get("stdin") or given.get("pty") or b""


def signal_op(request: dict[str, Any]) -> dict[str, Any]:
    return {"op": "signal", **selector(request), "signal": SIGNALS.get(request.get("signal") or 9, 9)}


def process_list(commands: list[dict[str, Any]]) -> dict[str, Any]:
    """The hub's running commands as a ListResponse."""
    processes = []
    for command in commands:
        cmd, *args = command["cmd"] or [""]
        info: dict[str, Any] = {"pid": command["pid"],
                                "config": {"cmd": cmd, "args": args, "envs": command.get("env") or {},
                                           "cwd": e2b_path(command.get("cwd") or HOME)}}
        if command.get("tag"):
            info["tag"] = command["tag"]
        processes.append(info)
    return {"processes": processes}


def entry_info(entry: dict[str, Any]) -> dict[str, Any]:
    """The hub's detailed entry as an EntryInfo: a symlink as what it points at, its target as an
    absolute path, as envd tells them."""
    path = e2b_path(entry["path"])
    kind = entry.get("target_kind") or entry["kind"]
    info = {"name": entry["name"] or path.rsplit("/", 1)[-1], "type": KINDS.get(kind, 0), "path": path,
            "size": entry["size"], "mode": entry["mode"] & 0o7777, "permissions": stats.filemode(entry["mode"]),
            "owner": OWNERS.get(entry["uid"], str(entry["uid"])), "group": OWNERS.get(entry["gid"], str(entry["gid"])),
            "modified_time": entry["mtime"], "metadata": entry.get("metadata") or {}}
    if entry.get("target") is not None:
        info["symlink_target"] = posixpath.normpath(posixpath.join(posixpath.dirname(path), entry["target"]))
    return info


def list_op(request: dict[str, Any]) -> dict[str, Any]:
    depth = request.get("depth") or 1
    return {"op": "list", "path": work_path(request.get("path") or HOME), "depth": min(depth, MAX_LIST_DEPTH), "detail": True}


def written(path: str, metadata: dict[str, str]) -> dict[str, Any]:
    """One file of POST /files' answer, with the metadata it was given, as envd's."""
    full = e2b_path(path)
    return {"name": full.rsplit("/", 1)[-1], "type": "file", "path": full, **({"metadata": metadata} if metadata else {})}


def upload_metadata(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """An upload's metadata, from its X-Metadata-<key> headers as E2B's SDKs send it: keys
    lowercased (as envd's), HTTP tokens; values printable ASCII; each and their number bounded."""
    metadata = {}
    for name, value in headers:
        if not name.lower().startswith(METADATA_HEADER):
            continue
        key = name[len(METADATA_HEADER):].lower()
        if not METADATA_KEY.fullmatch(key) or len(key) > MAX_FILE_METADATA_KEY:
            raise ConnectError("invalid_argument", f"A metadata key is an HTTP token of at most {MAX_FILE_METADATA_KEY}"
                                                   f" characters, not {key[:200]!r}.")
        if not METADATA_VALUE.fullmatch(value) or len(value) > MAX_FILE_METADATA_VALUE:
            raise ConnectError("invalid_argument", f"Metadata {key!r}'s value is printable ASCII of at most"
                                                   f" {MAX_FILE_METADATA_VALUE} characters.")
        metadata[key] = value
    if len(metadata) > MAX_FILE_METADATA:
        raise ConnectError("invalid_argument", f"A file has at most {MAX_FILE_METADATA} metadata keys.")
    return metadata


def signature(path: str, operation: str, user: str, token: str, expiration: int | None) -> str:
    """A signed file URL's signature, as E2B's SDKs make it and envd checks it: v1_ and the SHA-256,
    base64 unpadded, of path:operation:user:token[:expiration]."""
    raw = ":".join([path, operation, user, token, *([str(expiration)] if expiration is not None else [])])
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


def check_signature(query: Mapping[str, str], operation: str, token: str, now: float) -> None:
    """A signed URL's query (path, username, signature, signature_expiration) checked against the
    sandbox's token, as envd checks it, with envd's messages: Unauthorized unless signed for this
    operation on this path, by this token, and not expired."""
    expiration = query.get("signature_expiration")
    if expiration is not None and not re.fullmatch(r"-?[0-9]{1,18}", expiration):
        raise Unauthorized("invalid signature expiration")
    expected = signature(query.get("path", ""), operation, query.get("username", ""), token,
                         None if expiration is None else int(expiration))
    if not hmac.compare_digest(expected.encode(), query.get("signature", "").encode(errors="replace")):
        raise Unauthorized("invalid signature")
    if expiration is not None and int(expiration) < now:
        raise Unauthorized("signature is already expired")


def watch_op(request: dict[str, Any]) -> dict[str, Any]:
    """CreateWatcher's request as the hub's watcher; network mounts are none here, so allowing them
    changes nothing."""
    return {"op": "watch", "path": work_path(request.get("path") or HOME), "recursive": bool(request.get("recursive")),
            "entries": bool(request.get("include_entry"))}


def watch_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The hub's watcher events as a GetWatcherEventsResponse: names relative to the watched
    folder, entries as EntryInfo."""
    return {"events": [{"name": event["name"], "type": EVENT_TYPES[event["type"]],
                        **({"entry": entry_info(event["entry"])} if event.get("entry") else {})} for event in events]}


def envd_error(status: int, message: str) -> dict[str, Any]:
    """envd's error body, which its HTTP answers and the sandbox proxy's share."""
    return {"code": status, "message": message}
