"""Judge0 CE 1.13.1, translated: its submission bodies into TaskRequests, stored tasks into its JSON.

Pure functions, no I/O. What coderund cannot do as Judge0 does is refused with Judge0's own 422
messages (compiler options, network) or approximated and said so in the README (limits that coderund
sets per plugin, stderr redirected by concatenation).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import shlex
import zipfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..domain import MAX_FILES, Task, TaskRequest, TaskState, Verdict
from ..network import ANY, NetworkPolicy
from ..plugins import Plugin, Plugins

VERSION = "1.13.1"
STATUSES = {1: "In Queue", 2: "Processing", 3: "Accepted", 4: "Wrong Answer", 5: "Time Limit Exceeded",
            6: "Compilation Error", 7: "Runtime Error (SIGSEGV)", 8: "Runtime Error (SIGXFSZ)",
            9: "Runtime Error (SIGFPE)", 10: "Runtime Error (SIGABRT)", 11: "Runtime Error (NZEC)",
            12: "Runtime Error (Other)", 13: "Internal Error", 14: "Exec Format Error"}
SIGNAL_STATUS = {11: 7, 25: 8, 8: 9, 6: 10}  # Judge0's runtime errors by signal

# Judge0 CE 1.13.1's ids of the languages coderund ships: id → (plugin, the name's label). Several ids
# of one language (Judge0 keeps old compilers) run on coderund's one version of it.
LANGUAGES: dict[int, tuple[str, str]] = {
    45: ("assembly", "Assembly"), 46: ("bash", "Bash"), 48: ("c", "C"), 49: ("c", "C"), 50: ("c", "C"),
    51: ("csharp", "C#"), 52: ("cpp", "C++"), 53: ("cpp", "C++"), 54: ("cpp", "C++"), 55: ("lisp", "Common Lisp"),
    56: ("d", "D"), 57: ("elixir", "Elixir"), 58: ("erlang", "Erlang"), 59: ("fortran", "Fortran"), 60: ("go", "Go"),
    61: ("haskell", "Haskell"), 62: ("java", "Java"), 63: ("javascript", "JavaScript"), 64: ("lua", "Lua"),
    65: ("ocaml", "OCaml"), 66: ("octave", "Octave"), 67: ("pascal", "Pascal"), 68: ("php", "PHP"),
    69: ("prolog", "Prolog"), 71: ("python", "Python"), 72: ("ruby", "Ruby"), 73: ("rust", "Rust"),
    74: ("typescript", "TypeScript"), 75: ("c-clang", "C"), 76: ("cpp-clang", "C++"), 77: ("cobol", "COBOL"),
    78: ("kotlin", "Kotlin"), 79: ("objective-c", "Objective-C"), 80: ("r", "R"), 81: ("scala", "Scala"),
    82: ("sql", "SQL"), 85: ("perl", "Perl"), 86: ("clojure", "Clojure"), 88: ("groovy", "Groovy"),
}
PLAIN_TEXT, EXECUTABLE, MULTI_FILE = 43, 44, 89  # run as bash: the text printed; the binary; the zip's scripts
PLAIN_TEXT_FILE = "source.txt"
FOREIGN_NAMES = {43: "Plain Text", 44: "Executable", 89: "Multi-file program"}
EXECUTABLE_FILE = "a.out.b64"  # the binary as base64 text (a task's files are text), decoded in the sandbox
RUN_EXECUTABLE = f'base64 -d {EXECUTABLE_FILE} > a.out && chmod +x a.out && exec ./a.out "$@"\n'
SHELL = "bash"

DEFAULT_FIELDS = ("token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status")
ALL_FIELDS = ("source_code", "language_id", "stdin", "expected_output", "stdout", "status_id", "created_at",
              "finished_at", "time", "memory", "stderr", "token", "number_of_runs", "cpu_time_limit", "cpu_extra_time",
              "wall_time_limit", "memory_limit", "stack_limit", "max_processes_and_or_threads",
              "enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit",
              "max_file_size", "compile_output", "exit_code", "exit_signal", "message", "wall_time",
              "compiler_options", "command_line_arguments", "redirect_stderr_to_stdout", "callback_url",
              "additional_files", "enable_network", "status", "language")
TEXT_FIELDS = ("source_code", "stdin", "expected_output", "stdout", "stderr", "compile_output")


@dataclass(frozen=True)
class Limits:
    """Judge0's limits as /config_info tells them (defaults and maximums); coderund's are per plugin."""

    cpu_time_limit: float = 5.0
    max_cpu_time_limit: float = 15.0
    cpu_extra_time: float = 1.0
    max_cpu_extra_time: float = 5.0
    wall_time_limit: float = 10.0
    max_wall_time_limit: float = 20.0
    memory_limit: int = 128000
    max_memory_limit: int = 512000
    stack_limit: int = 64000
    max_stack_limit: int = 128000
    max_processes_and_or_threads: int = 60
    max_max_processes_and_or_threads: int = 120
    max_file_size: int = 1024
    max_max_file_size: int = 4096
    max_extract_size: int = 10240
    max_submission_batch_size: int = 20
    allow_enable_network: bool = False  # egress is on: enable_network asks for the operator's widest policy


class NotUtf8(Exception):
    """A text field is not UTF-8 and base64 was not asked for."""


def language_name(plugin: Plugin, label: str) -> str:
    """As Judge0 names them, "Go (1.19)", with coderund's real version of the language."""
    version = plugin.version
    if version.lower().startswith(label.lower() + " "):
        version = version[len(label) + 1:]
    return f"{label} ({version})"


def languages(plugins: Plugins) -> list[dict[str, Any]]:
    """The ids this server runs, sorted by name as Judge0 lists them."""
    found = [{"id": i, "name": language_name(plugins.get(name), label)} for i, (name, label) in LANGUAGES.items()
             if plugins.has(name)]
    if plugins.has(SHELL):
        found += [{"id": i, "name": name} for i, name in FOREIGN_NAMES.items()]
    return sorted(found, key=lambda lang: (lang["name"], lang["id"]))


def language(plugins: Plugins, language_id: int) -> dict[str, Any] | None:
    for entry in languages(plugins):
        if entry["id"] == language_id:
            name = LANGUAGES.get(language_id, (SHELL, ""))[0]
            plugin = plugins.get(name)
            compile_cmd = " ".join(plugin.compile) if plugin.compile and language_id in LANGUAGES else None
            return {**entry, "is_archived": False, "source_file": plugin.source_file if language_id in LANGUAGES else None,
                    "compile_cmd": compile_cmd, "run_cmd": " ".join(plugin.run) if language_id in LANGUAGES else None}
    return None


def parse_fields(value: str | None) -> tuple[str, ...] | str:
    """The fields asked for, or the error message for unknown ones."""
    names = [name for name in (value or "").split(",") if name]
    if "*" in names:
        return ALL_FIELDS
    unknown = [name for name in names if name not in ALL_FIELDS]
    if unknown:
        return f"invalid fields: [{', '.join(unknown)}]"
    return tuple(names) or DEFAULT_FIELDS


def _decode(value: Any, base64_encoded: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if not base64_encoded:
        return value
    return base64.b64decode(value.encode(), validate=False).decode()


def _number(body: dict[str, Any], name: str, errors: dict[str, list[str]], low: float, high: float, *,
            low_inclusive: bool = True, whole: bool = False) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or math.isinf(number) or (whole and number != int(number)):
        errors.setdefault(name, []).append("is not a number" if not whole or math.isnan(number) else "must be an integer")
    elif number < low or (number == low and not low_inclusive):
        errors.setdefault(name, []).append(f"must be greater than {'or equal to ' if low_inclusive else ''}{low}")
    elif number > high:
        errors.setdefault(name, []).append(f"must be less than or equal to {high}")
    else:
        return number
    return None


def _zip_files(data: bytes, max_bytes: int) -> tuple[tuple[str, str], ...] | str:
    """additional_files: a zip's regular files, safely (no path escape, no bomb), as text."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError, OSError):
        return "is not a valid zip archive"
    if len(members) > MAX_FILES:
        return f"must hold at most {MAX_FILES} files"
    files, total = [], 0
    for member in members:
        name = member.filename
        parts = name.split("/")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in name:
            return f"holds a path that leaves its folder: {name[:100]!r}"
        total += member.file_size
        if total > max_bytes:
            return f"extracts to more than {max_bytes // 1024} KB"
        try:
            with archive.open(member) as handle:
                content = handle.read(max_bytes + 1)  # the header's size is the sender's word; this is ours
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError):
            return "is not a valid zip archive"
        if len(content) > member.file_size or len(content) > max_bytes:
            return f"extracts to more than {max_bytes // 1024} KB"
        try:
            files.append((name, content.decode()))
        except UnicodeDecodeError:
            return f"holds a file that is not UTF-8 text: {name[:100]!r} (coderund takes text files)"
    return tuple(files)


def parse_submission(body: Any, plugins: Plugins, limits: Limits, *, base64_encoded: bool) -> TaskRequest | dict[str, list[str]]:
    """The TaskRequest a Judge0 submission body means, or Judge0's 422 errors ({field: [messages]})."""
    if not isinstance(body, dict):
        return {"submission": ["must be a JSON object"]}
    errors: dict[str, list[str]] = {}
    texts: dict[str, str | None] = {}
    raw_id = body.get("language_id")
    binary = str(raw_id) == str(EXECUTABLE)
    for name in ("source_code", "stdin", "expected_output"):
        try:
            if binary and name == "source_code" and body.get(name) is not None:
                raw = str(body[name])
                data = base64.b64decode(raw.encode()) if base64_encoded else raw.encode()
                texts[name] = base64.b64encode(data).decode()  # carried as base64 text until the sandbox
            else:
                texts[name] = _decode(body.get(name), base64_encoded)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            errors.setdefault(name, []).append("is not valid base64-encoded UTF-8 text")
    language_id = None
    if raw_id is None or raw_id == "":
        errors.setdefault("language_id", []).append("can't be blank")
    else:
        try:
            language_id = int(str(raw_id)) if not isinstance(raw_id, bool) else None
        except ValueError:
            language_id = None
        if language_id is None or not any(lang["id"] == language_id for lang in languages(plugins)):
            errors.setdefault("language_id", []).append(f"language with id {raw_id} doesn't exist")
            language_id = None
    cpu = _number(body, "cpu_time_limit", errors, 0, limits.max_cpu_time_limit)
    extra = _number(body, "cpu_extra_time", errors, 0, limits.max_cpu_extra_time)
    wall = _number(body, "wall_time_limit", errors, 1, limits.max_wall_time_limit)
    memory_kb = _number(body, "memory_limit", errors, 2048, limits.max_memory_limit)
    _number(body, "stack_limit", errors, 0, limits.max_stack_limit)
    _number(body, "max_processes_and_or_threads", errors, 0, limits.max_max_processes_and_or_threads, low_inclusive=False)
    _number(body, "max_file_size", errors, 0, limits.max_max_file_size)
    _number(body, "number_of_runs", errors, 0, 1, low_inclusive=False)
    for name in ("compiler_options", "command_line_arguments"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 512):
            errors.setdefault(name, []).append("is too long (maximum is 512 characters)")
    if body.get("compiler_options"):
        errors.setdefault("compiler_options", []).append("setting compiler options is not allowed")
    if body.get("enable_network") and not limits.allow_enable_network:
        errors.setdefault("enable_network", []).append("enabling network is not allowed")
    for name in ("enable_per_process_and_thread_time_limit", "enable_per_process_and_thread_memory_limit"):
        if body.get(name):
            errors.setdefault(name, []).append("this option cannot be enabled")
    args: tuple[str, ...] = ()
    if isinstance(body.get("command_line_arguments"), str):
        try:
            args = tuple(shlex.split(body["command_line_arguments"]))
        except ValueError:
            errors.setdefault("command_line_arguments", []).append("is not a valid shell word list")
    files: tuple[tuple[str, str], ...] = ()
    if body.get("additional_files"):
        try:
            zipped = base64.b64decode(str(body["additional_files"]).encode())
        except (binascii.Error, ValueError):
            zipped = None
        found = _zip_files(zipped, limits.max_extract_size * 1024) if zipped is not None else "is not valid base64"
        if isinstance(found, str):
            errors.setdefault("additional_files", []).append(found)
        else:
            files = found
    source = texts.get("source_code")
    if language_id == MULTI_FILE:
        if source:
            errors.setdefault("source_code", []).append("must be blank")
        if not files:
            errors.setdefault("additional_files", []).append("can't be blank")
    elif not source:
        errors.setdefault("source_code", []).append("can't be blank")
    callback = body.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        errors.setdefault("callback_url", []).append("must be a URL")
    if errors or language_id is None:
        return errors
    stdin = texts.get("stdin") or ""
    time_s = cpu if cpu is not None else (wall if wall is not None else limits.cpu_time_limit)
    time_s += extra if extra is not None else limits.cpu_extra_time
    requested = {"time_ms": max(1, int(time_s * 1000))}
    if memory_kb is not None:
        requested["memory_mb"] = max(1, math.ceil(memory_kb / 1024))
    compat = {"api": "judge0", "language_id": language_id, "expected_output": texts.get("expected_output"),
              "redirect_stderr_to_stdout": bool(body.get("redirect_stderr_to_stdout")),
              "command_line_arguments": body.get("command_line_arguments"),
              "request": {name: body.get(name) for name in ("cpu_time_limit", "cpu_extra_time", "wall_time_limit",
                                                             "memory_limit", "stack_limit", "max_processes_and_or_threads",
                                                             "max_file_size", "number_of_runs")}}
    name, code = LANGUAGES.get(language_id, (SHELL, ""))[0], source or ""
    if language_id == PLAIN_TEXT:
        files, code = ((PLAIN_TEXT_FILE, code),), f"cat {PLAIN_TEXT_FILE}"
    elif language_id == EXECUTABLE:
        files, code = ((EXECUTABLE_FILE, code),), RUN_EXECUTABLE
    elif language_id == MULTI_FILE:
        code = "if [ -f compile ]; then bash compile || exit $?; fi\nexec bash run \"$@\"\n"
    # Judge0's switch has no list: the widest policy there is, which admission narrows to the operator's.
    network = NetworkPolicy((ANY,)) if body.get("enable_network") else None
    return TaskRequest(name, code, stdin, args, requested, files, callback_url=callback or None, compat=compat,
                       network=network)


def fit_limits(request: TaskRequest, plugin: Plugin) -> TaskRequest:
    """Judge0's limits within the plugin's own range: a Judge0 client sends Judge0's defaults."""
    fitted = {}
    for name, value in request.limits.items():
        low, high = getattr(plugin.min_limits, name), getattr(plugin.max_limits, name)
        fitted[name] = min(max(value, low), high)
    return dataclasses.replace(request, limits=fitted)


def _strip(text: str) -> str:
    """Judge0's comparison: each line right-stripped, trailing blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def status(task: Task) -> int:
    if task.result is None:
        return 1 if task.state is TaskState.QUEUED else 2
    r = task.result
    if r.verdict is Verdict.OK:
        expected = (task.compat or {}).get("expected_output")
        if expected is None or _strip(expected) == _strip(r.stdout.decode(errors="replace")):
            return 3
        return 4
    if r.verdict is Verdict.TIME_LIMIT:
        return 5
    if r.verdict is Verdict.COMPILE_ERROR:
        return 6
    if r.verdict is Verdict.RUNTIME_ERROR:
        return SIGNAL_STATUS.get(r.signal, 12) if r.signal else 11
    if r.verdict in (Verdict.MEMORY_LIMIT, Verdict.OUTPUT_LIMIT):
        return 12
    return 13


MESSAGES = {Verdict.MEMORY_LIMIT: "Memory limit exceeded", Verdict.OUTPUT_LIMIT: "Output limit exceeded",
            Verdict.CANCELLED: "Cancelled", Verdict.INTERNAL_ERROR: "Internal error"}


def encode(data: bytes) -> str:
    """Base64 as Judge0's Ruby writes it (RFC 2045): a line break every 60 characters and at the end."""
    text = base64.b64encode(data).decode()
    return "".join(text[i:i + 60] + "\n" for i in range(0, len(text), 60))


def iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z" if value else None


def _seconds(ms: int | None) -> str | None:
    return None if ms is None else f"{ms / 1000:.3f}"


def document(task: Task, plugins: Plugins, fields: tuple[str, ...], *, base64_encoded: bool) -> dict[str, Any]:
    """The submission as Judge0 answers it; NotUtf8 for a text that needs base64_encoded=true."""
    compat = task.compat or {}
    r = task.result
    stdout, stderr = (r.stdout, r.stderr) if r else (b"", b"")
    if r and compat.get("redirect_stderr_to_stdout"):
        stdout, stderr = stdout + stderr, b""
    source = task.code.encode()
    if compat.get("language_id") == PLAIN_TEXT:
        source = dict(task.files).get(PLAIN_TEXT_FILE, "").encode()
    elif compat.get("language_id") == EXECUTABLE:
        source = base64.b64decode(dict(task.files).get(EXECUTABLE_FILE, ""))
    elif compat.get("language_id") == MULTI_FILE:
        source = b""
    expected = compat.get("expected_output")
    raw = {"source_code": source, "stdin": task.stdin.encode(), "expected_output": None if expected is None else expected.encode(),
           "stdout": stdout if r else None, "stderr": stderr if r else None, "compile_output": r.compile_output if r else None}
    status_id = status(task)
    message = MESSAGES.get(r.verdict) if r else None
    if r and r.verdict is Verdict.RUNTIME_ERROR and r.signal:
        message = f"Exited with signal {r.signal}"
    elif r and r.verdict is Verdict.RUNTIME_ERROR:
        message = f"Exited with error status {r.exit_code}"
    language_id = compat.get("language_id")
    name, label = LANGUAGES.get(language_id, (SHELL, FOREIGN_NAMES.get(language_id, "")))
    language_name_ = language_name(plugins.get(name), label) if language_id in LANGUAGES and plugins.has(name) else label
    request = compat.get("request", {})
    values: dict[str, Any] = {
        "token": str(task.id), "language_id": language_id, "status_id": status_id,
        "status": {"id": status_id, "description": STATUSES[status_id]},
        "language": {"id": language_id, "name": language_name_},
        "created_at": iso(task.created_at), "finished_at": iso(task.finished_at),
        "time": _seconds(r.spent()[0]) if r else None, "wall_time": _seconds(r.spent()[1]) if r else None,
        "memory": r.memory_kb if r else None, "exit_code": r.exit_code if r else None, "exit_signal": r.signal if r else None,
        "message": message, "number_of_runs": 1, "compiler_options": None,
        "command_line_arguments": compat.get("command_line_arguments"),
        "redirect_stderr_to_stdout": bool(compat.get("redirect_stderr_to_stdout")), "callback_url": task.callback_url,
        "additional_files": None, "enable_network": task.network is not None,
        "cpu_time_limit": f"{task.limits.time_ms / 1000:.1f}", "cpu_extra_time": "0.0",
        "wall_time_limit": f"{task.limits.time_ms / 1000:.1f}", "memory_limit": task.limits.memory_mb * 1024,
        "stack_limit": request.get("stack_limit") or 64000,
        "max_processes_and_or_threads": request.get("max_processes_and_or_threads") or 60,
        "enable_per_process_and_thread_time_limit": False, "enable_per_process_and_thread_memory_limit": False,
        "max_file_size": request.get("max_file_size") or 1024,
    }
    out: dict[str, Any] = {}
    for field in fields:
        if field in raw:
            data = raw[field]
            if data is None or data == b"":
                out[field] = None
            elif base64_encoded:
                out[field] = encode(data)
            else:
                try:
                    out[field] = data.decode()
                except UnicodeDecodeError:
                    raise NotUtf8() from None
        elif field == "message" and base64_encoded and message:
            out[field] = encode(message.encode())
        else:
            out[field] = values[field]
    return out


def config_info(limits: Limits, *, max_queue: int) -> dict[str, Any]:
    """Every key Judge0's /config_info has, with what coderund does (the SDK needs all of them)."""
    return {
        "maintenance_mode": False, "enable_wait_result": True, "enable_compiler_options": False,
        "allowed_languages_for_compile_options": [], "enable_command_line_arguments": True,
        "enable_submission_delete": True, "enable_callbacks": True, "callbacks_max_tries": 6, "callbacks_timeout": 5.0,
        "enable_additional_files": True, "max_queue_size": max_queue, "cpu_time_limit": limits.cpu_time_limit,
        "max_cpu_time_limit": limits.max_cpu_time_limit, "cpu_extra_time": limits.cpu_extra_time,
        "max_cpu_extra_time": limits.max_cpu_extra_time, "wall_time_limit": limits.wall_time_limit,
        "max_wall_time_limit": limits.max_wall_time_limit, "memory_limit": limits.memory_limit,
        "max_memory_limit": limits.max_memory_limit, "stack_limit": limits.stack_limit,
        "max_stack_limit": limits.max_stack_limit, "max_processes_and_or_threads": limits.max_processes_and_or_threads,
        "max_max_processes_and_or_threads": limits.max_max_processes_and_or_threads,
        "enable_per_process_and_thread_time_limit": False, "allow_enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False, "allow_enable_per_process_and_thread_memory_limit": False,
        "max_file_size": limits.max_file_size, "max_max_file_size": limits.max_max_file_size, "number_of_runs": 1,
        "max_number_of_runs": 1, "redirect_stderr_to_stdout": False, "max_extract_size": limits.max_extract_size,
        "enable_batched_submissions": True, "max_submission_batch_size": limits.max_submission_batch_size,
        "submission_cache_duration": 1.0, "use_docs_as_homepage": False,
        "allow_enable_network": limits.allow_enable_network, "enable_network": False,
    }


def callback_body(task: Task, plugins: Plugins) -> bytes:
    """What Judge0 PUTs to a callback_url: the default fields, base64-encoded."""
    return json.dumps(document(task, plugins, DEFAULT_FIELDS, base64_encoded=True)).encode()
