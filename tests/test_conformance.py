"""One conformance suite for every plugin in plugins/: the same programs, written per language in
tests/conformance/<name>.toml, each run as a real task (API, queue, worker, sandbox), under runc
and under gVisor.

A plugin without its programs fails here, so the suite cannot silently skip a language.
"""
from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest

from coderund import plugins
from coderund.config import DEFAULT_PLUGINS_DIR

PROGRAMS = Path(__file__).parent / "conformance"
LOADED = plugins.load(DEFAULT_PLUGINS_DIR)
RUN_PROGRAMS = {"hello", "echo", "args", "exit3", "runtime_error", "loop", "memory", "output", "network"}
COMPILE_PROGRAMS = {"compile_error", "compile_error_says"}  # the latter: what the compiler's message must hold
def programs_of(name: str) -> dict[str, str]:
    programs = tomllib.loads((PROGRAMS / f"{name}.toml").read_text())
    return programs_of(programs["same_as"]) if "same_as" in programs else programs


def test_every_plugin_has_its_programs_and_every_program_its_plugin():
    assert sorted(path.stem for path in PROGRAMS.glob("*.toml")) == [plugin.name for plugin in LOADED.all]
    for plugin in LOADED.all:
        wanted = RUN_PROGRAMS - ({"args"} if not plugin.takes_args else set()) | (COMPILE_PROGRAMS if plugin.compile else set())
        assert set(programs_of(plugin.name)) == wanted, plugin.name
        assert plugin.example, f"{plugin.name} has no example, the program the playground opens with"


def cases(plugin: plugins.Plugin) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(program, what the task adds to it, what its result must hold)."""
    yield "hello", {}, {"verdict": "ok", "stdout": "hello, world\n", "exit_code": 0}
    # The plugin's own example (GET /languages, the playground): it reads a name, with no newline
    # after it here, and greets it.
    yield "example", {"stdin": "world"}, {"verdict": "ok", "stdout": "Hello, world!\n", "exit_code": 0}
    yield "echo", {"stdin": "one\ntwo words\n"}, {"verdict": "ok", "stdout": "one\ntwo words\n"}
    if plugin.takes_args:  # else the plugin says the language has no command line: test_conformance checks that
        yield "args", {"args": ["a b", "c"]}, {"verdict": "ok", "stdout": "a b|c\n"}
    yield "exit3", {}, {"verdict": "runtime_error", "exit_code": 3}
    yield "runtime_error", {}, {"verdict": "runtime_error"}
    yield "loop", {"limits": {"time_ms": 1000}}, {"verdict": "time_limit"}
    # Four times the default memory limit (fixed in the program when it takes no args): the program,
    # not the runtime, goes over it; given the language's longest time, so that a loaded machine
    # (gVisor's page faults are slow) does not make it a race with the clock.
    memory = {"args": [str(4 * plugin.limits.memory_mb)]} if plugin.takes_args else {}
    yield "memory", {**memory, "limits": {"time_ms": plugin.max_limits.time_ms}}, {"verdict": "memory_limit"}
    yield "output", {}, {"verdict": "output_limit", "truncated": True}
    yield "network", {}, {"verdict": "ok", "stdout": "offline\n"}
    if plugin.compile:
        yield "compile_error", {}, {"verdict": "compile_error"}


@pytest.mark.parametrize("language", [plugin.name for plugin in LOADED.all])
async def test_conformance(runtime_api, language):
    plugin = LOADED.get(language)
    programs = {**programs_of(language), "example": plugin.example}
    token = await runtime_api.user(f"conformance-{runtime_api.runtime}-{language}")
    chosen = list(cases(plugin))
    results = await asyncio.gather(*(runtime_api.run(token, language=language, code=programs[name], **extra)
                                     for name, extra, _ in chosen))
    failures = []
    for (name, _, expected), result in zip(chosen, results, strict=True):
        seen = {key: result[key] for key in expected}
        if seen != expected:
            failures.append(f"{name}: expected {expected}, got {seen}; stderr {result['stderr'][-300:]!r}"
                            f" compile_output {result['compile_output'][-300:]!r}")
        if name == "compile_error" and programs["compile_error_says"] not in result["compile_output"]:
            failures.append(f"compile_error: {programs['compile_error_says']!r} not in {result['compile_output']!r}")
    if not plugin.takes_args:
        status, body, _ = await runtime_api.call("POST", "/task", token=token,
                                                 json={"language": language, "code": programs["hello"], "args": ["a"]})
        if status != 400 or "no command line" not in body["message"]:
            failures.append(f"args: a language without a command line took them: {status} {body}")
    assert not failures, "\n".join(failures)
