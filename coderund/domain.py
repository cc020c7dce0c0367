"""Users, tasks, limits and verdicts: the rules, with no I/O."""
from __future__ import annotations

import base64
import enum
import fnmatch
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .addresses import ascii_host
from .checkers import DEFAULT as DEFAULT_CHECKER
from .checkers import Checker, parse_checker
from .errors import InvalidJson, ValidationFailed
from .network import NetworkPolicy, parse_policy

USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{3,64}")
PASSWORD_LENGTH = (8, 256)
MAX_CODE_BYTES = 512 * 1024
MAX_STDIN_BYTES = 1024 * 1024
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_ARGS = 64
MAX_ARG_CHARS = 4096
MAX_WAIT_S = 30
MAX_FILES = 32
MAX_TESTS = 64
MAX_STORED_FILE_BYTES = 1024 * 1024  # one file a client stores for later runs (Jobe's file cache)
MAX_OUTPUTS = 16  # patterns of files a task asks back
MAX_ARTIFACTS = 32  # files a result brings back
MAX_ARTIFACT_BYTES = 8 * 1024 * 1024  # all of them together


class Verdict(enum.StrEnum):
    OK = "ok"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIME_LIMIT = "time_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    INTERNAL_ERROR = "internal_error"
    WRONG_ANSWER = "wrong_answer"  # a test case ran fine, but its output is not the expected one
    CANCELLED = "cancelled"  # its owner cancelled it before it finished
    SKIPPED = "skipped"  # a test case not run: an earlier one failed and the task asked to stop


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"

    @property
    def public(self) -> str:
        """Clients see two words only: finished in any way is ready."""
        return "ready" if self is TaskState.DONE else "in_progress"


@dataclass(frozen=True)
class Limits:
    time_ms: int
    memory_mb: int

    FIELDS = ("time_ms", "memory_mb")


# Below these nothing runs: a process start takes tens of ms (more under gVisor), and the engine
# refuses a container under 6 MB. A plugin may ask for more in [limits.min].
PLATFORM_MIN = Limits(time_ms=100, memory_mb=8)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class TestCase:
    stdin: str
    args: tuple[str, ...]
    expected: str


@dataclass(frozen=True)
class Program:
    """How to build and run a request's code in its language's image when not by the plugin's own
    commands: a foreign API's conventions (Jobe's file names, compiler arguments and rlimits). The
    sandbox is the same; only the command lines and the program's process limits differ."""

    source_file: str  # the entry file's name, in place of the plugin's
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None  # None: nothing to build
    address_space_mb: int = 0  # RLIMIT_AS of the run; 0: none
    file_size_mb: int = 0  # RLIMIT_FSIZE of the run; 0: the sandbox's
    processes: int = 0  # processes and threads of the run at once; 0: the sandbox's

    def document(self) -> dict[str, Any]:
        return {**vars(self), "run": list(self.run), "compile": None if self.compile is None else list(self.compile)}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Program:
        return cls(**{**document, "run": tuple(document["run"]),
                      "compile": None if document["compile"] is None else tuple(document["compile"])})


@dataclass(frozen=True)
class TaskRequest:
    language: str
    code: str
    stdin: str
    args: tuple[str, ...]
    limits: dict[str, int]  # only what the client asked for; the plugin resolves the rest
    files: tuple[tuple[str, str], ...] = ()  # beside the entry file `code`: (relative path, content)
    tests: tuple[TestCase, ...] = ()
    checker: Checker = DEFAULT_CHECKER
    stop_on_failure: bool = False
    callback_url: str | None = None
    compat: dict[str, Any] | None = None  # a foreign API's own details of the request (e.g. Judge0's)
    program: Program | None = None  # its own commands, in place of the plugin's
    outputs: tuple[str, ...] = ()  # patterns of files in the work folder to bring back
    network: NetworkPolicy | None = None  # the hosts it may reach through the egress proxy; None: no network


@dataclass(frozen=True)
class Artifact:
    """A file a run left that its task asked back."""

    name: str
    content: bytes


@dataclass(frozen=True)
class RunReport:
    """What the supervisor saw of one program run."""

    exit_code: int | None
    signal: int | None
    wall_ms: int
    cpu_ms: int
    memory_kb: int
    timed_out: bool
    output_over: bool
    oom: bool | None  # ran out of memory (the kernel's kill or the runtime's error); None where it cannot be told
    stdout: bytes
    stderr: bytes
    error_reported: bool = False  # it exited 0, but its runtime said it failed (GNU Prolog's failed directive)


@dataclass(frozen=True)
class CaseResult:
    """One test case's run, its output capped for storage."""

    verdict: Verdict
    exit_code: int | None = None
    signal: int | None = None
    time_ms: int | None = None
    wall_ms: int | None = None
    memory_kb: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    compile_output: bytes = b""
    truncated: bool = False
    time_ms: int | None = None
    wall_ms: int | None = None
    memory_kb: int | None = None
    container: str | None = None  # the sandbox it ran in, for the operator
    tests: tuple[CaseResult, ...] | None = None  # with test cases: each one's, in order
    artifacts: tuple[Artifact, ...] = ()  # the files asked back (outputs) that fit the caps
    artifacts_truncated: bool = False  # more matched than the caps let through
    network_usage: dict[str, int] | None = None  # with a network policy: connections allowed, refused, and bytes

    def spent(self) -> tuple[int, int]:
        """CPU and wall ms the task used: with test cases, all of them."""
        if self.tests:
            return sum(c.time_ms or 0 for c in self.tests), sum(c.wall_ms or 0 for c in self.tests)
        return self.time_ms or 0, self.wall_ms or 0


@dataclass
class Task:
    id: uuid.UUID
    user_id: int
    language: str
    code: str
    stdin: str
    args: list[str]
    limits: Limits
    files: tuple[tuple[str, str], ...] = ()
    tests: tuple[TestCase, ...] = ()
    checker: Checker = DEFAULT_CHECKER
    stop_on_failure: bool = False
    callback_url: str | None = None
    live: bool = False  # submitted over /ws: output streamed, stdin fed as it comes
    tty: bool = False  # live, with a terminal (a pseudo-terminal for the program's stdin and stdout), not pipes
    compat: dict[str, Any] | None = None  # as TaskRequest.compat
    program: Program | None = None  # as TaskRequest.program
    outputs: tuple[str, ...] = ()  # as TaskRequest.outputs
    network: NetworkPolicy | None = None  # as TaskRequest.network, within the operator's widest
    cancel_requested: bool = False
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Result | None = field(default=None)


def _string(body: dict[str, Any], *names: str, required: bool = True) -> str | None:
    for name in names:
        if name in body:
            value = body[name]
            if not isinstance(value, str):
                raise ValidationFailed(f"'{name}' must be a string.")
            return value
    if required:
        raise ValidationFailed(f"'{names[0]}' is required.")
    return None


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    return body


def parse_json(data: bytes | str) -> Any:
    """A JSON document; anything the parser cannot take (bad syntax or encoding, numbers past the
    digit limit, deep nesting) is InvalidJson, never a crash."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidJson("The body is not valid JSON.") from None


def parse_credentials(body: object) -> Credentials:
    body = _object(body)
    username = _string(body, "username", "login")
    password = _string(body, "password")
    assert username is not None and password is not None
    if not USERNAME_RE.fullmatch(username):
        raise ValidationFailed("'username' must be 3 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-'.")
    low, high = PASSWORD_LENGTH
    if not low <= len(password) <= high:
        raise ValidationFailed(f"'password' must be {low} to {high} characters long.")
    utf8_size(password, "password")  # it is hashed as UTF-8
    return Credentials(username, password)


def utf8_size(value: str, name: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationFailed(f"'{name}' is not valid Unicode text.") from None


TASK_FIELDS = frozenset({"language", "translator", "code", "stdin", "args", "files", "tests", "checker",
                         "stop_on_failure", "callback_url", "limits", "outputs", "network"})


def parse_task_request(body: object) -> TaskRequest:
    """A POST /task body's shape; what its values may be is the admission step's (coderund/admission.py),
    the same for every way in."""
    body = _object(body)
    if unknown := sorted(set(body) - TASK_FIELDS):
        # A field of another API's (Judge0's expected_output, say) silently ignored would pass every program.
        raise ValidationFailed(f"'{unknown[0][:100]}' is not a task field; a task takes {', '.join(sorted(TASK_FIELDS))}.")
    language = _string(body, "language", "translator")
    code = _string(body, "code")
    stdin = _string(body, "stdin", required=False) or ""
    assert language is not None and code is not None
    args = _strings(body.get("args", []), "args")
    files = _files(body.get("files", []))
    tests = _tests(body.get("tests", []))
    checker = parse_checker(body.get("checker", "trim"))
    stop_on_failure = body.get("stop_on_failure", False)
    if not isinstance(stop_on_failure, bool):
        raise ValidationFailed("'stop_on_failure' must be true or false.")
    callback_url = _string(body, "callback_url", required=False)
    if callback_url is not None:
        _check_callback_url(callback_url)
    limits = body.get("limits", {})
    if not isinstance(limits, dict):
        raise ValidationFailed("'limits' must be an object.")
    for name, value in limits.items():
        if name not in Limits.FIELDS:
            raise ValidationFailed(f"'limits.{name[:100]}' is not a limit; use {', '.join(Limits.FIELDS)}.")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValidationFailed(f"'limits.{name}' must be a positive integer.")
    outputs = _outputs(body.get("outputs", []))
    network = parse_policy(body["network"]) if body.get("network") is not None else None
    return TaskRequest(language, code, stdin, args, dict(limits), files, tests, checker, stop_on_failure, callback_url,
                       outputs=outputs, network=network)


def _outputs(outputs: Any) -> tuple[str, ...]:
    """Patterns of files to bring back: paths in the work folder, each part a shell-style pattern."""
    if not isinstance(outputs, list) or len(outputs) > MAX_OUTPUTS or not all(
            isinstance(o, str) and 0 < len(o) <= 256 and not o.startswith("/") and ".." not in o.split("/")
            and "" not in o.split("/") for o in outputs):
        raise ValidationFailed(f"'outputs' must be a list of at most {MAX_OUTPUTS} relative paths or patterns "
                               "('plot.png', 'out/*.csv'), with no '..'.")
    return tuple(outputs)


def _matches(name: str, pattern: str) -> bool:
    parts, wanted = name.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(map(fnmatch.fnmatchcase, parts, wanted))


def select_artifacts(files: dict[str, bytes | None], patterns: tuple[str, ...]) -> tuple[tuple[Artifact, ...], bool]:
    """The regular files whose paths match a pattern part by part (`*` stays within a folder), in
    name order, up to MAX_ARTIFACTS files and MAX_ARTIFACT_BYTES in all; and whether any were left out."""
    chosen: list[Artifact] = []
    total, left_out = 0, False
    for name in sorted(files):
        content = files[name]
        if content is None or not any(_matches(name, pattern) for pattern in patterns):
            continue
        if len(chosen) == MAX_ARTIFACTS or total + len(content) > MAX_ARTIFACT_BYTES:
            left_out = True
            continue
        total += len(content)
        chosen.append(Artifact(name, content))
    return tuple(chosen), left_out


def _check_callback_url(url: str) -> None:
    """The URL's form; where its host points is checked by the webhook sender (it takes DNS)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not one
    except ValueError:
        parts = None
    if len(url) > 2048 or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("'callback_url' must be an http:// or https:// URL of at most 2048 characters.")
    if ascii_host(parts.hostname) is None:
        raise ValidationFailed("'callback_url' names a host that cannot be a DNS name (an empty label, a label over"
                               " 63 characters, or characters IDNA refuses).")


def _strings(args: Any, name: str) -> tuple[str, ...]:
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValidationFailed(f"'{name}' must be a list of strings.")
    return tuple(args)


def _files(files: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(files, list):
        raise ValidationFailed("'files' must be a list of {\"name\", \"content\"} objects.")
    parsed = []
    for i, entry in enumerate(files[:MAX_FILES + 1]):  # the admission step refuses more: no need to look further
        where = f"files[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "content"}:
            raise ValidationFailed(f"'{where}' must be an object with 'name' and 'content'.")
        parsed.append((_field_text(entry, "name", where), _field_text(entry, "content", where)))
    return tuple(parsed)


def _field_text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise ValidationFailed(f"'{where}.{key}' must be a string.")
    return value


def _tests(tests: Any) -> tuple[TestCase, ...]:
    if not isinstance(tests, list):
        raise ValidationFailed("'tests' must be a list of {\"stdin\", \"args\", \"expected\"} objects.")
    parsed = []
    for i, case in enumerate(tests[:MAX_TESTS + 1]):  # the admission step refuses more
        where = f"tests[{i}]"
        if not isinstance(case, dict) or not set(case) <= {"stdin", "args", "expected"} or "expected" not in case:
            raise ValidationFailed(f"'{where}' must be an object with 'expected', and optionally 'stdin' and 'args'.")
        parsed.append(TestCase(_field_text(case, "stdin", where), _strings(case.get("args", []), f"{where}.args"),
                               _field_text(case, "expected", where)))
    return tuple(parsed)


MAX_BATCH = 100
HISTORY_STATES = ("queued", "running", "done")


@dataclass(frozen=True)
class HistoryQuery:
    state: str | None
    language: str | None
    before: tuple[datetime, uuid.UUID] | None  # the last task of the previous page
    limit: int


def parse_batch(body: object) -> list[Any]:
    """{"tasks": [...]} of at most MAX_BATCH task bodies, each checked on its own later."""
    tasks = _object(body).get("tasks")
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_BATCH:
        raise ValidationFailed(f"'tasks' must be a list of 1 to {MAX_BATCH} task bodies.")
    return tasks


def parse_ids(value: str) -> list[str]:
    ids = [i for i in value.split(",") if i]
    if not 1 <= len(ids) <= MAX_BATCH:
        raise ValidationFailed(f"'ids' must name 1 to {MAX_BATCH} task ids, separated by commas.")
    return ids


def parse_history_query(query: dict[str, str]) -> HistoryQuery:
    state = query.get("state") or None
    if state is not None and state not in HISTORY_STATES:
        raise ValidationFailed(f"'state' must be one of {', '.join(HISTORY_STATES)}.")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_BATCH:
        raise ValidationFailed(f"'limit' must be a whole number from 1 to {MAX_BATCH}.")
    before = None
    if query.get("cursor"):
        try:
            stamp, _, task_id = base64.urlsafe_b64decode(query["cursor"].encode()).decode().partition("|")
            before = (datetime.fromisoformat(stamp), uuid.UUID(task_id))
        except ValueError:
            raise ValidationFailed("'cursor' is not one this server gave; use 'next_cursor' of the previous page.") from None
    return HistoryQuery(state, query.get("language") or None, before, limit)


def history_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


MAX_USAGE_DAYS = 90


def parse_days(value: str | None) -> int:
    if value is None:
        return 7
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_USAGE_DAYS:
        raise ValidationFailed(f"'days' must be a whole number from 1 to {MAX_USAGE_DAYS}.")
    return int(value)


def parse_wait(value: str | None) -> float:
    """The `wait` query parameter: seconds to hold the answer for a result, 0 when absent."""
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_S:  # also refuses nan and inf
        raise ValidationFailed(f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S}.")
    return seconds


def resolve_limits(defaults: Limits, minimum: Limits, maximum: Limits, requested: dict[str, int]) -> Limits:
    """A request may lower a default down to the minimum or raise it up to the maximum, never past either."""
    for name, value in requested.items():
        if value > getattr(maximum, name):
            raise ValidationFailed(f"'limits.{name}' is {value}; this language allows at most {getattr(maximum, name)}.")
        if value < getattr(minimum, name):
            raise ValidationFailed(f"'limits.{name}' is {value}; this language needs at least {getattr(minimum, name)}.")
    return Limits(**{name: requested.get(name, getattr(defaults, name)) for name in Limits.FIELDS})


def classify(report: RunReport, memory_mb: int) -> Verdict:
    """The verdict of a program run, from what the supervisor saw."""
    if report.timed_out:
        return Verdict.TIME_LIMIT
    if report.output_over:
        return Verdict.OUTPUT_LIMIT
    if not (report.signal or report.exit_code or report.error_reported):
        return Verdict.OK
    # Without the kernel's OOM count, a SIGKILL near the limit is the OOM killer's.
    near_limit = report.signal == 9 and report.memory_kb >= memory_mb * 1024 * 0.9
    if report.oom or (report.oom is None and near_limit):
        return Verdict.MEMORY_LIMIT
    return Verdict.RUNTIME_ERROR


def run_result(report: RunReport, memory_mb: int, compile_output: bytes = b"", container: str | None = None) -> Result:
    return Result(
        verdict=classify(report, memory_mb),
        exit_code=report.exit_code,
        signal=report.signal or None,
        stdout=report.stdout,
        stderr=report.stderr,
        compile_output=compile_output,
        truncated=report.output_over,
        time_ms=report.cpu_ms,
        wall_ms=report.wall_ms,
        memory_kb=report.memory_kb,
        container=container,
    )


CASE_OUTPUT_MAX = 8 * 1024  # of each case's stdout and stderr, kept in the result


def case_result(report: RunReport, memory_mb: int, expected: str, checker: Checker) -> CaseResult:
    verdict = classify(report, memory_mb)
    if verdict is Verdict.OK and not checker.accepts(report.stdout.decode("utf-8", errors="replace"), expected):
        verdict = Verdict.WRONG_ANSWER
    return CaseResult(
        verdict=verdict, exit_code=report.exit_code, signal=report.signal or None, time_ms=report.cpu_ms,
        wall_ms=report.wall_ms, memory_kb=report.memory_kb, stdout=report.stdout[:CASE_OUTPUT_MAX],
        stderr=report.stderr[:CASE_OUTPUT_MAX],
        truncated=report.output_over or max(len(report.stdout), len(report.stderr)) > CASE_OUTPUT_MAX,
    )


def judged(cases: list[CaseResult], compile_output: bytes, container: str | None) -> Result:
    """A task with test cases: ok when every case is; else the first failing case's verdict, and its
    run stands for the task's (else the last case's)."""
    failing = [case for case in cases if case.verdict not in (Verdict.OK, Verdict.SKIPPED)]
    shown = failing[0] if failing else cases[-1]
    return Result(
        verdict=shown.verdict, exit_code=shown.exit_code, signal=shown.signal, stdout=shown.stdout, stderr=shown.stderr,
        compile_output=compile_output, truncated=shown.truncated, time_ms=shown.time_ms, wall_ms=shown.wall_ms,
        memory_kb=shown.memory_kb, container=container, tests=tuple(cases),
    )


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def text(data: bytes) -> str:
    """Output as JSON carries it: any bytes, decoded with replacement."""
    return data.decode("utf-8", errors="replace")


def result_document(task: Task) -> dict[str, Any]:
    """The document of a finished task, as GET /result answers it."""
    r = task.result
    assert r is not None
    return {
        "status": task.state.public,
        "result": text(r.stdout),
        "verdict": r.verdict.value,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "stdout": text(r.stdout),
        "stderr": text(r.stderr),
        "compile_output": text(r.compile_output),
        "truncated": r.truncated,
        "time_ms": r.time_ms,
        "wall_ms": r.wall_ms,
        "memory_kb": r.memory_kb,
        "language": task.language,
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        **(_cases(task, r) if task.tests else {}),
        **(_artifacts(r) if task.outputs else {}),
        **({"network_usage": r.network_usage} if r.network_usage is not None else {}),
    }


def _artifacts(r: Result) -> dict[str, Any]:
    return {"artifacts": [{"name": a.name, "size": len(a.content), "content_base64": base64.b64encode(a.content).decode()}
                          for a in r.artifacts], "artifacts_truncated": r.artifacts_truncated}


def _cases(task: Task, r: Result) -> dict[str, Any]:
    """Each test case's run (none after a compile error), and how many passed."""
    cases = r.tests or ()
    return {
        "tests": [{"verdict": c.verdict.value, "exit_code": c.exit_code, "signal": c.signal, "time_ms": c.time_ms,
                   "wall_ms": c.wall_ms, "memory_kb": c.memory_kb, "stdout": text(c.stdout), "stderr": text(c.stderr),
                   "truncated": c.truncated} for c in cases],
        "passed": sum(c.verdict is Verdict.OK for c in cases),
        "total": len(task.tests),
    }
