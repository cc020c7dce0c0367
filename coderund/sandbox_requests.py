"""Stateful sandboxes' requests and their rules: what a create, run, command or file call may ask."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .domain import MAX_ARG_CHARS, MAX_ARGS, MAX_CODE_BYTES, MAX_STDIN_BYTES
from .errors import PayloadTooLarge, ValidationFailed
from .network import NetworkPolicy, parse_policy

# A sandbox's language names its image and its first context; the hub runs on the image's python3,
# and bash contexts run in any sandbox, JavaScript ones where the image has node.
LANGUAGES = ("python", "javascript")
CONTEXT_LANGUAGES = ("python", "javascript", "typescript", "bash")
MAX_RUN_S = 3600
DEFAULT_RUN_S = 60
MAX_ENV = 64
MAX_METADATA = 32
MAX_PATH_CHARS = 4096
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
STATES = ("starting", "running", "paused", "ended")
WORK_FOLDER = "/box"  # a sandbox's files and its commands' working folder: its HOME
E2B_HOME = "/home/user"  # the work folder of a sandbox made through E2B's API, where E2B's SDKs expect it
# What one call may bring back, and what a sandbox may hold at once: its hub holds every call to
# these (past an output cap the rest is dropped, and the answer says truncated).
MAX_OUTPUT_BYTES = 1024 * 1024  # of a run's or command's stdout, and of its stderr, each
MAX_RESULTS = 32  # results of one run: its value, display()s, figures
MAX_RESULT_BYTES = 8 * 1024 * 1024  # all of them together, as JSON
MAX_CONTEXTS = 16  # a sandbox's contexts, its language's own among them
MAX_COMMANDS = 16  # commands running at once in a sandbox
MAX_ENTRIES = 10_000  # of one listing, however deep
MAX_LIST_DEPTH = 16  # of a listing: the hub holds a folder open at each level
MAX_STDIN_PENDING = 1024 * 1024  # bytes sent to a running command's stdin that it has not read yet
MAX_ATTACHED = 16  # clients attached to a running command besides the one that started it
MAX_WATCHERS = 16  # a sandbox's folder watchers
MAX_WATCH_EVENTS = 4096  # a watcher's events not yet taken; later ones are dropped
MAX_WATCHED_FOLDERS = 1024  # folders one recursive watcher follows
MAX_FILE_METADATA = 32  # a file's metadata: keys, each name and value bounded
MAX_FILE_METADATA_KEY = 128
MAX_FILE_METADATA_VALUE = 1024
MAX_LISTED_METADATA = 1024 * 1024  # of a listing's metadata, all entries together; past it, entries have none
FILE_CHUNK = 1024 * 1024  # of a file, per call to the sandbox: a download's pace is its reader's


@dataclass(frozen=True)
class StateLimits:
    """The operator's bounds of persisted sandbox files: one sandbox's, and one user's live ones' together."""

    max_bytes: int = 1024 * 1024 * 1024
    user_max_bytes: int = 4 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """The operator's: defaults and maxima of what a create may ask for."""

    memory_mb: int = 1024
    max_memory_mb: int = 4096
    cpus: float = 1.0
    max_cpus: float = 2.0
    disk_mb: int = 256
    max_disk_mb: int = 2048
    lifetime_s: int = 3600
    max_lifetime_s: int = 86400
    idle_timeout_s: int = 600


@dataclass(frozen=True)
class SandboxRequest:
    language: str
    memory_mb: int
    cpus: float
    disk_mb: int
    timeout_s: int
    idle_timeout_s: int
    env: dict[str, str]
    metadata: dict[str, str]
    work_folder: str = WORK_FOLDER
    network: NetworkPolicy | None = None  # as a task's (admission clamps it); None: no network


@dataclass(frozen=True)
class RunRequest:
    code: str
    context: str | None
    language: str | None
    timeout_s: float


@dataclass(frozen=True)
class CommandRequest:
    cmd: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    stdin: str
    timeout_s: float


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    return body


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, whole: bool = True) -> Any:
    value = body.get(name, default)
    kinds = (int,) if whole else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationFailed(f"'{name}' must be a {'whole ' if whole else ''}number from {low:g} to {high:g}.")
    return value


def _strings(body: dict[str, Any], name: str, most: int, keys: re.Pattern[str] | None = None) -> dict[str, str]:
    value = body.get(name, {})
    if not isinstance(value, dict) or len(value) > most or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= MAX_ARG_CHARS
            and "\0" not in k + v and (keys is None or keys.fullmatch(k)) for k, v in value.items()):
        rule = "names of letters, digits and _" if keys else "keys of up to 128 characters"
        raise ValidationFailed(f"'{name}' must be an object of at most {most} strings with no NUL, {rule}.")
    return dict(value)


def parse_sandbox_request(body: object, limits: SandboxLimits) -> SandboxRequest:
    body = _object(body)
    language = body.get("language", "python")
    if language not in LANGUAGES:
        raise ValidationFailed(f"'language' must be one of {', '.join(LANGUAGES)} (bash runs in any sandbox as a context).")
    return SandboxRequest(
        language=language,
        memory_mb=_number(body, "memory_mb", limits.memory_mb, 64, limits.max_memory_mb),
        cpus=float(_number(body, "cpus", limits.cpus, 0.1, limits.max_cpus, whole=False)),
        disk_mb=_number(body, "disk_mb", limits.disk_mb, 16, limits.max_disk_mb),
        timeout_s=_number(body, "timeout_s", limits.lifetime_s, 1, limits.max_lifetime_s),
        idle_timeout_s=_number(body, "idle_timeout_s", limits.idle_timeout_s, 1, limits.max_lifetime_s),
        env=_strings(body, "env", MAX_ENV, ENV_NAME),
        metadata=_strings(body, "metadata", MAX_METADATA),
        network=parse_policy(body["network"]) if body.get("network") is not None else None,
    )


def parse_env(value: object, name: str) -> dict[str, str]:
    """Environment variables as every sandbox call takes them: names of letters, digits and _."""
    return _strings({name: value}, name, MAX_ENV, ENV_NAME)


def parse_timeout(body: object, limits: SandboxLimits) -> int:
    return _number(_object(body), "timeout_s", limits.lifetime_s, 1, limits.max_lifetime_s)


def _text(body: dict[str, Any], name: str, most: int, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"'{name}' must be a string.")
    if len(value.encode()) > most:
        raise PayloadTooLarge(f"'{name}' is over {most // 1024} KiB.")
    return value


def parse_run(body: object) -> RunRequest:
    body = _object(body)
    code = _text(body, "code", MAX_CODE_BYTES, required=True)
    language = _text(body, "language", 64)
    if language is not None and language not in CONTEXT_LANGUAGES:
        raise ValidationFailed(f"'language' must be one of {', '.join(CONTEXT_LANGUAGES)}.")
    return RunRequest(code or "", _text(body, "context", 64), language,
                      _number(body, "timeout_s", DEFAULT_RUN_S, 0.1, MAX_RUN_S, whole=False))


def parse_context(body: object) -> str | None:
    """A new context's language; None: the sandbox's own."""
    language = _object(body).get("language")
    if language is not None and language not in CONTEXT_LANGUAGES:
        raise ValidationFailed(f"'language' must be one of {', '.join(CONTEXT_LANGUAGES)}.")
    return language


def parse_command(body: object, word_chars: int = MAX_ARG_CHARS) -> CommandRequest:
    """A command; each of its words at most word_chars long (a foreign API's shell command line may be
    one long word)."""
    body = _object(body)
    cmd = body.get("cmd")
    if isinstance(cmd, str):
        cmd = ["bash", "-c", cmd]
    if (not isinstance(cmd, list) or not cmd or len(cmd) > MAX_ARGS
            or not all(isinstance(a, str) and len(a) <= word_chars and "\0" not in a for a in cmd)):
        raise ValidationFailed(f"'cmd' must be a list of 1 to {MAX_ARGS} strings of at most {word_chars} characters"
                               " with no NUL (or one string, run by bash -c).")
    return CommandRequest(tuple(cmd), file_path(_text(body, "cwd", MAX_PATH_CHARS) or "."), _strings(body, "env", MAX_ENV, ENV_NAME),
                          _text(body, "stdin", MAX_STDIN_BYTES) or "",
                          _number(body, "timeout_s", DEFAULT_RUN_S, 0.1, MAX_RUN_S, whole=False))


def file_path(path: str) -> str:
    """A path in the work folder, relative; '..' is refused (the hub also refuses symlinks)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if len(path) > MAX_PATH_CHARS or "\0" in path or ".." in parts:
        raise ValidationFailed("A path must stay inside the work folder: no '..', no NUL, at most 4096 characters.")
    return "/".join(parts) or "."


def metadata_filter(query: dict[str, str]) -> dict[str, str]:
    """GET /sandboxes?metadata.KEY=VALUE...: the sandboxes whose metadata hold all of them."""
    return {key.removeprefix("metadata."): value for key, value in query.items() if key.startswith("metadata.")}
