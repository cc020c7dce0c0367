"""Jobe (the sandbox behind Moodle's CodeRunner), translated: run_spec bodies into TaskRequests and
stored tasks into Jobe's result object. Pure functions, no I/O.

A Jobe language is a coderund plugin's image run with Jobe's own command lines (its Task classes'
compile and run commands, file names and default arguments) and its rlimits, through a Program: the
sandbox and the worker are coderund's. Errors are Jobe's messages, in Jobe's order of checks.
"""
from __future__ import annotations

import base64
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from ..domain import Program, Task, TaskRequest, Verdict
from ..plugins import Plugin, Plugins

MAX_CPUTIME_S = 120  # Jobe's cputime_upper_limit_secs
OVERLOAD_PROBE = "!** TESTING OVERLOAD EXCEPTION **!"  # Jobe's own test of its overload answer
MIN_FILE_ID = 8
MAX_FILE_ID = 128  # Jobe's clients name files by a hash (CodeRunner: 32 hex digits)
COMPILATION_ERROR, RUNTIME_ERROR, TIME_LIMIT, SUCCESS, INTERNAL_ERROR, SERVER_OVERLOAD = 11, 12, 13, 15, 20, 21
DEFAULTS: dict[str, Any] = {"disklimit": 20, "streamsize": 2, "cputime": 5, "memorylimit": 400, "numprocs": 30,
                            "compileargs": [], "linkargs": [], "interpreterargs": [], "runargs": []}
ARG_LISTS = ("compileargs", "linkargs", "interpreterargs", "runargs")
JAVA_MAIN = re.compile(r"(^|\W)public\s+class\s+(\w+)[^{]*\{.*?(public\s+static|static\s+public)\s+void\s+main\s*\(\s*String",
                       re.S | re.M)
# Jobe's test for a source file name: none of these characters, no leading '.' or '-'.
UNSAFE_NAME = re.compile(r"""[<>:"/\\|?*\x00-\x1f\x7f\xa0\xad#\[\]@!$&'()+,;={}^~`]""")
DECODE_SUFFIX = ".coderund-b64"  # a stored file that is not text travels as base64 and is decoded in the sandbox


class JobeError(Exception):
    """A run Jobe refuses: its HTTP status and its message (sent as a JSON string)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Language:
    """One of Jobe's Task classes: its plugin, default file name, commands and default parameters.
    Commands are Jobe's shell lines: {src} the source file, {exe} its build, {args...} the parameters."""

    plugin: str
    source: str
    run: str  # the executable; an interpreter is followed by the target file
    compile: str | None = None
    interpreted: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)


# The compile commands' stdout goes nowhere: Jobe takes any output of the compiler's stderr as a
# compilation error, and coderund's compile output is both streams.
LANGUAGES: dict[str, Language] = {
    "c": Language("c", "prog.c", "./{exe}", "gcc {compileargs} -o {exe} {src} {linkargs}",
                  defaults={"compileargs": ["-Wall", "-Werror", "-std=c99", "-x c"]}),
    "cpp": Language("cpp", "prog.cpp", "./{exe}", "g++ {compileargs} -o {exe} {src} {linkargs}",
                    defaults={"compileargs": ["-Wall", "-Werror"]}),
    "python3": Language("python", "prog.py", "python3", "python3 -m py_compile {src}", interpreted=True,
                        defaults={"memorylimit": 1000, "interpreterargs": ["-BE"]}),
    "java": Language("java", "prog.java", "java", "javac {compileargs} {src}", interpreted=True,
                     defaults={"numprocs": 256, "interpreterargs": ["-Xrs", "-Xss8m", "-Xmx200m"]}),
    "nodejs": Language("javascript", "prog.js", "node", interpreted=True, defaults={"interpreterargs": ["--use_strict"]}),
    "php": Language("php", "prog.php", "php", "php -l {src}", interpreted=True,
                    defaults={"memorylimit": 400, "interpreterargs": ["--no-php-ini"]}),
    "octave": Language("octave", "prog.m", "octave", interpreted=True,
                       defaults={"memorylimit": 500, "interpreterargs": ["--norc", "--no-window-system", "--silent", "-H"]}),
    # fpc reports errors in a file of its own: they become the compile output when there is no build.
    "pascal": Language("pascal", "prog.pas", "./{exe}",
                       "fpc {compileargs} -Fe{src}.err -o{exe} {src}; test -f {exe} || {{ cat {src}.err >&2; exit 1; }}",
                       defaults={"compileargs": ["-vew", "-Se"]}),
}
JAVA_MIN_PROCESSES = 256  # Jobe's minimum for the JVM


@dataclass(frozen=True)
class RunSpec:
    """A checked run_spec: what remains is to fetch its files (file_list: (id, name) pairs)."""

    language_id: str
    sourcecode: str
    sourcefilename: str
    input: str
    parameters: dict[str, Any]
    file_list: tuple[tuple[str, str], ...]


def version(plugin: Plugin) -> str:
    """The plugin's version number, as Jobe lists them ("12", "3.11")."""
    found = re.search(r"\d+(\.\d+)*", plugin.version)
    return found.group(0) if found else plugin.version


def languages(plugins: Plugins) -> list[list[str]]:
    return [[name, version(plugins.get(lang.plugin))] for name, lang in LANGUAGES.items() if plugins.has(lang.plugin)]


def _valid_source_name(name: str) -> bool:
    return UNSAFE_NAME.sub("-", name).lstrip(".-") == name


def _print_r(value: Any) -> str:
    """A file specifier as Jobe's message shows it (PHP's print_r)."""
    if isinstance(value, list):
        return "Array\n(\n" + "".join(f"    [{i}] => {item}\n" for i, item in enumerate(value)) + ")\n"
    return str(value)


def _valid_file_spec(spec: Any) -> bool:
    return (isinstance(spec, list) and len(spec) in (2, 3) and isinstance(spec[0], str) and isinstance(spec[1], str)
            and MIN_FILE_ID <= len(spec[0]) <= MAX_FILE_ID and spec[0].isascii() and spec[0].isalnum() and len(spec[1]) > 0
            and re.sub(r"[-_.]", "", spec[1]).isascii() and re.sub(r"[-_.]", "", spec[1]).isalnum())


def _numeric(value: Any) -> bool:
    """A finite number, or text that reads as one: Jobe's parameters may come as either."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def parse_run(body: Any, plugins: Plugins) -> RunSpec:
    """The run_spec of a POST runs body, checked as Jobe checks it; JobeError (400) otherwise."""
    if not isinstance(body, dict):
        raise JobeError(400, "Non-JSON post data received")
    run = body.get("run_spec")
    if not isinstance(run, dict):
        raise JobeError(400, "No run_spec attribute found in post data")
    for name in ("sourcecode", "language_id"):
        if run.get(name) is None:
            raise JobeError(400, f"run_spec is missing the required attribute '{name}'")
        if not isinstance(run[name], str):
            raise JobeError(400, f"run_spec attribute '{name}' must be a string")
    language_id = run["language_id"].lower()
    if language_id not in LANGUAGES or not plugins.has(LANGUAGES[language_id].plugin):
        raise JobeError(400, f"Language '{language_id}' is not known")
    stdin = run.get("input") or ""
    parameters = run.get("parameters") or {}
    if not isinstance(stdin, str):
        raise JobeError(400, "run_spec attribute 'input' must be a string")
    if not isinstance(parameters, dict):
        raise JobeError(400, "run_spec attribute 'parameters' must be an object")
    cputime = parameters.get("cputime", 0)
    if _numeric(cputime) and float(cputime) >= MAX_CPUTIME_S + 1:  # PHP's intval(): 120.5 is 120
        raise JobeError(400, f"cputime exceeds maximum allowed on this Jobe server ({MAX_CPUTIME_S} secs)")
    name = run.get("sourcefilename") or ""
    if not isinstance(name, str) or (name and not _valid_source_name(name)):
        raise JobeError(400, "The sourcefilename for the run_spec is illegal")
    if name == "prog.java":  # as Jobe: legacy CodeRunner's almost-certainly-wrong name is ignored
        name = ""
    specs = run.get("file_list") or []
    if not isinstance(specs, list):
        raise JobeError(400, f"Invalid file specifier: {_print_r(specs)}")
    for spec in specs:
        if not _valid_file_spec(spec):
            raise JobeError(400, f"Invalid file specifier: {_print_r(spec)}")
    for arg_list in ARG_LISTS:
        value = parameters.get(arg_list, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise JobeError(400, f"parameter '{arg_list}' must be a list of strings")
    if not isinstance(parameters.get("main_class", ""), str):
        raise JobeError(400, "parameter 'main_class' must be a string")
    return RunSpec(language_id, run["sourcecode"], name, stdin, parameters,
                   tuple((spec[0], spec[1]) for spec in specs))


def _param(spec: RunSpec, language: Language, name: str) -> Any:
    """Jobe's getParam: the request's value, else the language's default, else Jobe's; a number
    that is not one falls back to the default."""
    default = language.defaults.get(name, DEFAULTS[name])
    value = spec.parameters.get(name, default)
    if isinstance(default, (int, float)) and not _numeric(value):
        return default
    return int(float(value)) if isinstance(default, (int, float)) else value


def _java_main(sourcecode: str) -> str | None:
    found = JAVA_MAIN.findall(sourcecode)
    return found[0][1] if len(found) == 1 else None


def task_request(spec: RunSpec, plugins: Plugins, files: dict[str, bytes]) -> TaskRequest:
    """The TaskRequest of a checked run, its file_list's contents given by id (all present)."""
    language = LANGUAGES[spec.language_id]
    plugin = plugins.get(language.plugin)
    source = spec.sourcefilename
    if not source:
        main = _java_main(spec.sourcecode) if spec.language_id == "java" else None
        source = f"{main}.java" if main else language.source
    exe = f"{source}.exe"
    quoted = {"src": shlex.quote(source), "exe": shlex.quote(exe),
              **{name: " ".join(_param(spec, language, name)) for name in ("compileargs", "linkargs")}}
    run = [language.run.format(**quoted), *_param(spec, language, "interpreterargs")]
    if language.interpreted:
        target = source
        if spec.language_id == "java":
            target = spec.parameters.get("main_class") or source.split(".", 1)[0]
        run.append(shlex.quote(target))
    run += _param(spec, language, "runargs")

    texts, decode = [], ""
    for file_id, name in spec.file_list:
        try:
            texts.append((name, files[file_id].decode()))
        except UnicodeDecodeError:
            texts.append((name + DECODE_SUFFIX, base64.b64encode(files[file_id]).decode()))
            encoded = shlex.quote(name + DECODE_SUFFIX)
            decode += f"base64 -d {encoded} > {shlex.quote(name)} && rm -f {encoded} && "
    compile_line = language.compile.format(**quoted) if language.compile else None
    if compile_line is not None:
        compile_line = f"{decode}{{ {compile_line}; }} >/dev/null"
    run_line = " ".join(run) if compile_line is not None else decode + " ".join(run)

    memory = 0 if spec.language_id == "java" else _param(spec, language, "memorylimit")  # Jobe leaves the JVM be
    processes = _param(spec, language, "numprocs")
    if spec.language_id == "java":
        processes = max(processes, JAVA_MIN_PROCESSES)
    disk = _param(spec, language, "disklimit")
    cputime = _param(spec, language, "cputime")
    time_ms = min(max(cputime * 1000, plugin.min_limits.time_ms), plugin.max_limits.time_ms)
    program = Program(source_file=source, run=("sh", "-c", run_line),
                      compile=None if compile_line is None else ("sh", "-c", compile_line),
                      address_space_mb=max(memory, 0), file_size_mb=max(disk, 0),
                      processes=max(processes, 1) + 1)  # + 1: the shell, as Jobe counts it
    compat = {"api": "jobe", "language_id": spec.language_id, "compiled": compile_line is not None}
    return TaskRequest(plugin.name, spec.sourcecode, spec.input, (), {"time_ms": time_ms}, tuple(texts),
                       compat=compat, program=program)


def clean(data: bytes) -> str:
    """Jobe's ResultObject::clean: UTF-8 as it is; anything else with every control character (but
    newline, tab and return) and every byte past '~' written as \\xNN."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "".join(chr(b) if (b >= 0x20 or b in (9, 10, 13)) and b <= 0x7E else f"\\x{b:02x}" for b in data)


def _octave_stderr(text: str) -> str:
    """OctaveTask::filteredStderr: the trailing noise of octave's error exit removed."""
    lines = text.replace("\r", "").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and lines[-1].startswith("error: ignoring octave_execution_exception"):
        lines.pop()
    if lines and lines[-1] == "error: No such file or directory":
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def result(task: Task) -> dict[str, Any]:
    """Jobe's result object of a finished task, its outcome decided as Jobe decides it: any compiler
    output is a compilation error, any stderr a runtime error, the exit code never matters."""
    r = task.result
    assert r is not None
    compat = task.compat or {}
    language_id = compat.get("language_id")
    cmpinfo = clean(r.compile_output)
    stdout, stderr = clean(r.stdout), clean(r.stderr)
    if language_id == "octave":
        stderr = _octave_stderr(stderr)
    elif language_id == "java":
        stderr = stderr.replace("\n\t", "\n        ")
    if r.verdict is Verdict.COMPILE_ERROR or (compat.get("compiled") and r.compile_output):
        outcome, stdout, stderr = COMPILATION_ERROR, "", ""
        cmpinfo = cmpinfo or "compilation failed"
    elif r.verdict in (Verdict.TIME_LIMIT, Verdict.OUTPUT_LIMIT):  # Jobe stops a program that keeps printing at its time limit
        outcome, stderr = TIME_LIMIT, ""
    elif r.verdict in (Verdict.INTERNAL_ERROR, Verdict.CANCELLED):
        outcome = INTERNAL_ERROR
    elif stderr or r.signal:
        outcome = RUNTIME_ERROR
    else:
        outcome = SUCCESS
    return {"run_id": str(task.id), "outcome": outcome, "cmpinfo": cmpinfo, "stdout": stdout, "stderr": stderr}


def overload() -> dict[str, Any]:
    """Jobe's answer when it has no room for a run (HTTP 200)."""
    return {"run_id": "0", "outcome": SERVER_OVERLOAD, "cmpinfo": "", "stdout": "", "stderr": ""}
