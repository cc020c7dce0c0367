"""Piston v2, translated: /api/v2/execute bodies into TaskRequests, stored tasks into its answer, and
coderund's plugins into its runtimes. Pure functions, no I/O.

Piston runs files[0] with its language's run script; coderund saves `code` as the plugin's entry file,
but a Java program's public class, which Piston's `java File.java` runs whatever it is called, is
built and run under its own name (Piston's own tests declare `public class HelloWorld` in test.java).
What cannot be said in coderund's terms is a 400 with Piston's words.
"""
from __future__ import annotations

import base64
import math
import binascii
import re
import signal as signals
from pathlib import PurePosixPath
from typing import Any

from ..domain import Program, Task, TaskRequest, Verdict
from ..plugins import Plugin, Plugins

# Piston's language names (and runtime) where they differ from coderund's plugin names.
NAMES = {"cpp": ("c++", None), "javascript": ("javascript", "node"), "typescript": ("typescript", None),
         "csharp": ("csharp", "mono"), "assembly": ("nasm64", None), "sql": ("sqlite3", None)}
EXTRA_ALIASES = {"cpp": ["g++"], "assembly": ["asm64"], "javascript": ["node-javascript", "node-js", "javascript", "js"],
                 "python": ["py", "py3", "python3"], "csharp": ["mono", "mono-csharp", "mono-c#", "mono-cs", "c#", "cs"]}
JAVA_CLASS = re.compile(r"\bpublic\s+(?:final\s+)?class\s+([A-Za-z_$][\w$]*)")
SEMVER = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")
NAME_MAX = 255  # bytes of a file name (Linux): a Java entry file named after its class must fit
LIMIT_NAMES = ("compile_timeout", "run_timeout", "compile_cpu_time", "run_cpu_time", "compile_memory_limit",
               "run_memory_limit")


def version(plugin: Plugin) -> str:
    """The plugin's version as semver: its first dotted number, to three parts."""
    found = SEMVER.search(plugin.version)
    return ".".join(part or "0" for part in found.groups()) if found else "0.0.0"


def language_name(plugin: Plugin) -> str:
    return NAMES.get(plugin.name, (plugin.name, None))[0]


def runtimes(plugins: Plugins) -> list[dict[str, Any]]:
    out = []
    for plugin in plugins.all:
        name, runtime = NAMES.get(plugin.name, (plugin.name, None))
        aliases = sorted({plugin.name, *plugin.aliases, *EXTRA_ALIASES.get(plugin.name, [])} - {name})
        entry = {"language": name, "version": version(plugin), "aliases": aliases}
        if runtime:
            entry["runtime"] = runtime
        out.append(entry)
    return out


def _parts(text: str) -> tuple[int, ...]:
    found = SEMVER.fullmatch(text.strip())
    return tuple(int(p) for p in found.groups() if p is not None) if found else ()


def matches(wanted: str, have: str) -> bool:
    """npm-style ranges as Piston clients send them: *, x, x.y, x.y.z, with ^, ~, >=, >, <=, <, =."""
    wanted = wanted.strip()
    if wanted in ("", "*", "x", "latest"):
        return True
    current = _parts(have)
    for clause in wanted.split():
        op = re.match(r"^(\^|~|>=|<=|>|<|=)?", clause).group(0)
        parts = _parts(clause[len(op):].replace(".x", "").replace(".*", ""))
        if not parts:
            return False
        padded = current + (0,) * 3
        if op in ("", "="):
            ok = padded[:len(parts)] == parts
        elif op == "^":
            ok = padded[0] == parts[0] and padded[:3] >= parts + (0,) * (3 - len(parts))
        elif op == "~":
            ok = padded[:2] == (parts + (0,))[:2] and padded[:3] >= parts + (0,) * (3 - len(parts))
        else:
            full = parts + (0,) * (3 - len(parts))
            ok = {">=": padded[:3] >= full, ">": padded[:3] > full, "<=": padded[:3] <= full, "<": padded[:3] < full}[op]
        if not ok:
            return False
    return True


def find(plugins: Plugins, language: str, wanted: str) -> Plugin | None:
    for plugin in plugins.all:
        entry = next(r for r in runtimes(plugins) if r["language"] == language_name(plugin))
        if language in (entry["language"], *entry["aliases"], plugin.name) and matches(wanted, entry["version"]):
            return plugin
    return None


def _content(file: dict[str, Any], i: int) -> str:
    """A file's text; ValueError with Piston-like words when it is not text coderund can take."""
    encoding = file.get("encoding") or "utf8"
    data = file["content"]
    if encoding == "utf8":
        return data
    try:
        raw = base64.b64decode(data, validate=True) if encoding == "base64" else bytes.fromhex(data) if encoding == "hex" else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise ValueError(f"files[{i}].content is not valid {encoding}" if encoding in ("base64", "hex")
                         else f"files[{i}].encoding must be one of utf8, base64, hex")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"files[{i}] is not UTF-8 text once decoded (coderund takes text files)") from None


def _java_program(plugin: Plugin, code: str) -> Program | None:
    """The plugin's own commands for a public class not called as its entry file's: the class saved in a
    file of its name and run by it, so that its name, in its output, strings and stack traces, stays."""
    found = JAVA_CLASS.search(code)
    main = PurePosixPath(plugin.source_file).stem
    if found is None or found.group(1) == main:
        return None
    name = found.group(1)
    return Program(source_file=f"{name}.java", compile=plugin.compile,
                   run=tuple(name if part == main else part for part in plugin.run))


def parse_execute(body: Any, plugins: Plugins, *, interactive: bool = False) -> TaskRequest | str:
    """The TaskRequest an execute body (or a WebSocket init) means, or Piston's message for a 400.
    Interactive, stdin is only what comes later, as Piston does."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    language, wanted, files = body.get("language"), body.get("version"), body.get("files")
    if not language or not isinstance(language, str):
        return "language is required as a string"
    if not wanted or not isinstance(wanted, str):
        return "version is required as a string"
    if not isinstance(files, list) or not files:
        return "files is required as an array"
    for i, file in enumerate(files):
        if not isinstance(file, dict) or not isinstance(file.get("content"), str):
            return f"files[{i}].content is required as a string"
    plugin = find(plugins, language, wanted)
    if plugin is None:
        return f"{language}-{wanted} runtime is unknown"
    try:
        texts = [_content(file, i) for i, file in enumerate(files)]
    except ValueError as e:
        return str(e)
    limits: dict[str, int] = {}
    for name in LIMIT_NAMES:
        value = body.get(name)
        if value is None or value == 0:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"If specified, {name} must be a number"
        if value < 0 and not name.endswith("memory_limit"):
            return f"{name} must be non-negative"
        if name in ("run_timeout", "run_cpu_time") and value > 0:
            limits["time_ms"] = min(limits.get("time_ms", 1 << 31), max(1, int(value)))
        if name == "run_memory_limit" and value > 0:
            limits["memory_mb"] = max(1, -(-int(value) // (1024 * 1024)))
    stdin, args = body.get("stdin") or "", body.get("args") or []
    if not isinstance(stdin, str):
        return "stdin must be a string"
    if interactive:
        stdin = ""
    elif not stdin.endswith("\n"):
        stdin += "\n"  # as Piston does
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return "args must be a list of strings"
    code = texts[0]
    program = _java_program(plugin, code) if plugin.name == "java" else None
    if program and len(program.source_file.encode()) > NAME_MAX:
        return f"files[0]'s public class name is too long: its file name would be over {NAME_MAX} bytes"
    entry = program.source_file if program else plugin.source_file
    others = []
    for i, (file, text) in enumerate(zip(files[1:], texts[1:], strict=True), start=1):
        name = file.get("name") or f"file{i}.code"
        if not isinstance(name, str) or name == entry:
            return f"files[{i}].name must be a string other than the entry file"
        others.append((name, text))
    compat = {"api": "piston", "language": language_name(plugin), "version": version(plugin)}
    return TaskRequest(plugin.name, code, stdin, tuple(args), limits, tuple(others), compat=compat, program=program)


def _signal_name(number: int | None) -> str | None:
    if not number:
        return None
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"SIG{number}"


STATUS = {Verdict.TIME_LIMIT: ("TO", "Time limit exceeded"), Verdict.OUTPUT_LIMIT: ("OL", "stdout length exceeded"),
          Verdict.MEMORY_LIMIT: ("SG", "Memory limit exceeded"), Verdict.INTERNAL_ERROR: ("XX", "Internal error"),
          Verdict.CANCELLED: ("XX", "Cancelled")}


def result(task: Task, plugin: Plugin) -> dict[str, Any]:
    """Piston's answer to execute. `output` is stdout then stderr: coderund keeps them apart."""
    r = task.result
    assert r is not None
    stdout, stderr = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    status, message = STATUS.get(r.verdict, (None, None))
    if r.verdict is Verdict.RUNTIME_ERROR:
        status, message = ("SG", f"Killed by signal {r.signal}") if r.signal else ("RE", f"Exited with error status {r.exit_code}")
    # SIGKILL, as Piston names it, for a run ended from outside: at a limit, or cancelled (a socket's signal)
    signal = "SIGKILL" if status in ("TO", "OL") or r.verdict is Verdict.CANCELLED else _signal_name(r.signal)
    stage = {"stdout": stdout, "stderr": stderr, "output": stdout + stderr, "code": r.exit_code, "signal": signal,
             "message": message, "status": status, "cpu_time": r.time_ms, "wall_time": r.wall_ms,
             "memory": None if r.memory_kb is None else r.memory_kb * 1024}
    compile_text = r.compile_output.decode(errors="replace")
    out: dict[str, Any] = {"language": task.compat.get("language") if task.compat else plugin.name,
                           "version": task.compat.get("version") if task.compat else version(plugin)}
    if plugin.compile:
        failed = r.verdict is Verdict.COMPILE_ERROR
        out["compile"] = {"stdout": "", "stderr": compile_text, "output": compile_text,
                          "code": (r.exit_code if r.exit_code is not None else 1) if failed else 0,
                          "signal": _signal_name(r.signal) if failed else None, "message": None, "status": None,
                          "cpu_time": None, "wall_time": r.wall_ms if failed else None, "memory": None}
        if failed:  # no run stage: Piston answers the compile stage as run too
            out["run"] = out["compile"]
            return out
    out["run"] = stage
    return out
