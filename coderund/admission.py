"""The admission step's rules: what every request to run code must be, whichever way it came in (a
native task, a live run, Judge0, Jobe, Piston). A foreign API only translates its request into a
TaskRequest; these rules, and the quotas and rates of usecases/admission.py, hold it to the same
bounds as any other. Pure: no I/O.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from .domain import (MAX_ARG_CHARS, MAX_ARGS, MAX_CODE_BYTES, MAX_FILES, MAX_STDIN_BYTES, MAX_TESTS, Limits, Program,
                     TaskRequest, utf8_size)
from .errors import PayloadTooLarge, ValidationFailed
from .network import NetworkPolicy, clamp
from .plugins import Plugin, Plugins

FILE_NAME_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
MAX_FILE_NAME = 255
MAX_SOURCE_BYTES = 2 * 1024 * 1024  # code and files together: a Jobe run may name stored files of 1 MiB
MAX_TESTS_BYTES = 2 * 1024 * 1024  # every test case's stdin, expected output and args together
MAX_COMPAT_BYTES = 64 * 1024  # a foreign API's own details of a request, as stored
MAX_COMMAND_CHARS = 64 * 1024  # a foreign API's own command lines (Jobe's), all their words together


@dataclass(frozen=True)
class Ceiling:
    """The operator's limits: whatever a request or its API asks, the sandbox never gets more."""

    pids_limit: int  # processes and threads of a run
    disk_mb: int  # the work folder's size, and so the largest file a run can write
    max_case_ms: int  # a task's test cases times its time limit
    network: NetworkPolicy | None = None  # the widest network policy a request may have; None: egress is off


@dataclass(frozen=True)
class Admitted:
    """A request that passed: as it will be stored and run, its plugin and its resolved limits."""

    request: TaskRequest
    plugin: Plugin
    limits: Limits


def admit_task(request: TaskRequest, plugins: Plugins, ceiling: Ceiling) -> Admitted:
    """The request held to every rule, its program's limits clamped to the operator's; ValidationFailed
    or PayloadTooLarge (naming the field) otherwise."""
    if utf8_size(request.code, "code") > MAX_CODE_BYTES:
        raise PayloadTooLarge(f"'code' is over {MAX_CODE_BYTES // 1024} KiB.")
    if utf8_size(request.stdin, "stdin") > MAX_STDIN_BYTES:
        raise PayloadTooLarge(f"'stdin' is over {MAX_STDIN_BYTES // 1024} KiB.")
    check_args(request.args, "args")
    check_files(request.files, utf8_size(request.code, "code"))
    _check_tests(request)
    if request.outputs and request.tests:
        raise ValidationFailed("'outputs' are for a single run: a task with test cases brings no files back.")
    if request.compat is not None and len(json.dumps(request.compat)) > MAX_COMPAT_BYTES:
        raise PayloadTooLarge(f"The request's own API details are over {MAX_COMPAT_BYTES // 1024} KiB.")
    program = clamp_program(request.program, ceiling) if request.program else None
    request = dataclasses.replace(request, program=program, network=admit_network(request.network, ceiling))
    plugin, limits = plugins.for_request(request)
    if len(request.tests) * limits.time_ms > ceiling.max_case_ms:
        raise ValidationFailed(f"{len(request.tests)} test cases at {limits.time_ms} ms each could hold a sandbox for"
                               f" longer than {ceiling.max_case_ms // 1000} s; lower 'limits.time_ms' or send fewer cases.")
    return Admitted(dataclasses.replace(request, code=plugin.prepared(request.code)), plugin, limits)


def admit_network(policy: NetworkPolicy | None, ceiling: Ceiling, name: str = "network") -> NetworkPolicy | None:
    """A request's network policy within the operator's widest (network.clamp); ValidationFailed
    naming it when egress is off."""
    if policy is None:
        return None
    if ceiling.network is None:
        raise ValidationFailed(f"'{name}': network egress is off on this server (the operator's --egress).")
    return clamp(policy, ceiling.network, name)


def check_args(args: tuple[str, ...], name: str) -> None:
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_CHARS or "\0" in a for a in args):
        raise ValidationFailed(f"'{name}' takes at most {MAX_ARGS} strings of {MAX_ARG_CHARS} characters, no NUL.")
    for arg in args:
        utf8_size(arg, name)


def check_files(files: tuple[tuple[str, str], ...], code_size: int) -> None:
    """Relative paths of plain parts, no duplicates, no file that is also a folder, at most MAX_FILES,
    and with the code at most MAX_SOURCE_BYTES in all."""
    if len(files) > MAX_FILES:
        raise ValidationFailed(f"'files' takes at most {MAX_FILES} files.")
    total, seen = code_size, set()
    for i, (name, content) in enumerate(files):
        where = f"files[{i}]"
        if len(name) > MAX_FILE_NAME or not FILE_NAME_RE.fullmatch(name) or any(p in (".", "..") for p in name.split("/")):
            raise ValidationFailed(f"'{where}.name' {name[:100]!r} must be a relative path of at most {MAX_FILE_NAME}"
                                   " characters, of parts made of A-Z a-z 0-9 . _ - separated by '/', without '.' or"
                                   " '..' parts.")
        if name in seen:
            raise ValidationFailed(f"'{where}.name' {name!r} is given twice.")
        if clash := next((other for other in seen if _contains(other, name) or _contains(name, other)), None):
            raise ValidationFailed(f"'{where}.name' {name!r} clashes with {clash!r}: a file cannot also be a folder.")
        seen.add(name)
        total += utf8_size(content, f"{where}.content")
        if total > MAX_SOURCE_BYTES:
            raise PayloadTooLarge(f"'code' and 'files' are over {MAX_SOURCE_BYTES // 1024} KiB together.")


def _contains(folder: str, path: str) -> bool:
    """Whether path lies inside folder (which then cannot be a file)."""
    return path.startswith(folder + "/")


def _check_tests(request: TaskRequest) -> None:
    if len(request.tests) > MAX_TESTS:
        raise ValidationFailed(f"'tests' takes at most {MAX_TESTS} cases.")
    total = 0
    for i, case in enumerate(request.tests):
        where = f"tests[{i}]"
        size = utf8_size(case.stdin, f"{where}.stdin") + utf8_size(case.expected, f"{where}.expected")
        if size > MAX_STDIN_BYTES:
            raise PayloadTooLarge(f"'{where}' is over {MAX_STDIN_BYTES // 1024} KiB.")
        check_args(case.args, f"{where}.args")
        total += size + sum(map(len, case.args))
        if total > MAX_TESTS_BYTES:
            raise PayloadTooLarge(f"'tests' are over {MAX_TESTS_BYTES // 1024} KiB together.")


def clamp_program(program: Program, ceiling: Ceiling) -> Program:
    """A foreign API's process limits within the operator's: its rlimits may lower the sandbox's,
    never raise them (0 stands for the sandbox's own)."""
    if sum(len(word) for word in (*program.run, *(program.compile or ()))) > MAX_COMMAND_CHARS:
        raise PayloadTooLarge(f"The program's command lines are over {MAX_COMMAND_CHARS // 1024} KiB.")
    if "\0" in program.source_file or any("\0" in word for word in (*program.run, *(program.compile or ()))):
        raise ValidationFailed("The program's command lines may not hold NUL.")
    return dataclasses.replace(
        program,
        processes=min(program.processes, ceiling.pids_limit) if program.processes > 0 else 0,
        file_size_mb=min(program.file_size_mb, ceiling.disk_mb) if program.file_size_mb > 0 else 0,
        address_space_mb=max(program.address_space_mb, 0))
