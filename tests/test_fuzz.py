"""A net for bad input: hypothesis throws arbitrary JSON, byte strings, huge numbers, deep nesting,
wrong types in every field and oversized strings at every route that reads JSON. Whatever comes,
no answer is a 5xx, every error has the documented shape, and a rejected task leaves no row behind
(and so no queue message: a message is published only after its row is committed)."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coderund.api.openapi import ERROR_CODES

EXAMPLES = 150
FIELDS = {
    "/task": ["language", "translator", "code", "stdin", "args", "limits"],
    "/register": ["username", "login", "password"],
    "/login": ["username", "login", "password"],
}
texts = st.text(st.characters(exclude_categories=()), max_size=50)  # lone surrogates too
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30, max_value=10**300)
           | st.floats(allow_nan=True, allow_infinity=True) | texts)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
                      max_leaves=15)


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()  # lone surrogates travel as \ud800 escapes


def bodies(route: str) -> st.SearchStrategy[bytes]:
    plausible = {"language": st.sampled_from(["python", "c", "PY", "brainfuck", ""]) | values,
                 "username": st.from_regex(r"fuzz_[a-z0-9]{3,12}", fullmatch=True) | values,
                 "password": st.text(st.characters(exclude_categories=()), min_size=8, max_size=20) | values,
                 "code": texts | values, "stdin": texts | values,
                 "limits": st.fixed_dictionaries({}, optional={"time_ms": values, "memory_mb": values, "cpu": values}) | values}
    fields = st.fixed_dictionaries({}, optional={name: plausible.get(name, values) for name in FIELDS[route]})
    # A valid body with one field, or two, replaced by something else.
    valid = {"/task": {"language": "python", "code": "print(1)", "limits": {"time_ms": 1000}}}.get(
        route, {"username": "fuzz_user", "password": "password123"})
    spoiled = st.builds(lambda changes: encoded({**valid, **changes}),
                        st.dictionaries(st.sampled_from(FIELDS[route]), texts | values, min_size=1, max_size=2)
                        | st.fixed_dictionaries({}, optional={name: plausible.get(name, values) for name in FIELDS[route]}))
    # Text that is not Unicode: a lone surrogate in each string field.
    unpaired = st.builds(lambda name, at, char: encoded({**valid, name: "password123"[:at] + char + "password123"[at:]}),
                         st.sampled_from(FIELDS[route]), st.integers(0, 11), st.characters(categories=["Cs"]))
    return st.one_of(
        spoiled,
        unpaired,
        fields.map(encoded),
        values.map(encoded),
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(min_value=1, max_value=60_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(min_value=4300, max_value=20_000).map(lambda n: b'{"limits": {"time_ms": ' + b"9" * n + b"}}"),
        st.sampled_from([600 * 1024, 1100 * 1024, 3 * 1024 * 1024]).map(
            lambda n: encoded({name: "x" * n for name in FIELDS[route]})),
    )


def draw(strategy: st.SearchStrategy[Any], count: int = EXAMPLES) -> list[Any]:
    """Hypothesis's examples (edge cases first), to send from the event loop the server shares."""
    drawn: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn


def documented_error(status: int, body: Any) -> bool:
    return isinstance(body, dict) and body.get("error") in ERROR_CODES and isinstance(body.get("message"), str)


async def task_count(settings_) -> int:
    async with await psycopg.AsyncConnection.connect(settings_.database_url) as conn:
        return (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0]


async def test_no_body_gets_a_5xx_or_an_undocumented_error(api, settings):
    token = await api.user("fuzz")
    for route in ("/register", "/login", "/task"):
        for body in draw(bodies(route)):
            before = await task_count(settings) if route == "/task" else 0
            status, answer, _ = await api.call("POST", route, token=token, data=body,
                                               headers={"Content-Type": "application/json"})
            shown = body[:200]
            assert status < 500, (route, shown, answer)
            if status >= 400:
                assert documented_error(status, answer), (route, shown, answer)
                if route == "/task":
                    assert await task_count(settings) == before, (shown, answer)


async def test_no_wait_or_task_id_gets_a_5xx(api):
    token = await api.user("fuzz")
    for text in draw(texts | st.floats(allow_nan=True).map(str) | st.integers().map(str), 100):
        quoted = quote(text, safe="") or "x"
        for path in (f"/result/{quoted}", "/result/00000000-0000-0000-0000-000000000000", f"/status/{quoted}"):
            status, answer, _ = await api.call("GET", path, token=token, params={"wait": text[:20] or "0"})
            assert status < 500, (path, text, answer)
            if status >= 400:
                assert documented_error(status, answer), (path, text, answer)


JOBE_RUNS = "/jobe/index.php/restapi/runs"
ADAPTERS = {
    # route: (a valid body, where its fields are, the fields)
    JOBE_RUNS: ({"run_spec": {"language_id": "python3", "sourcecode": "print(1)"}}, "run_spec",
                ["language_id", "sourcecode", "sourcefilename", "input", "file_list", "parameters"]),
    "/piston/api/v2/execute": ({"language": "python", "version": "*", "files": [{"content": "print(1)"}]}, None,
                               ["language", "version", "files", "stdin", "args", "run_timeout", "compile_timeout",
                                "run_memory_limit", "run_cpu_time"]),
    "/judge0/submissions": ({"language_id": 71, "source_code": "print(1)"}, None,
                            ["language_id", "source_code", "stdin", "cpu_time_limit", "memory_limit", "additional_files",
                             "command_line_arguments", "max_processes_and_or_threads", "callback_url", "wall_time_limit"]),
}
PARAMETERS = ["cputime", "numprocs", "memorylimit", "disklimit", "main_class", "compileargs", "runargs", "interpreterargs"]
NUMBERS = st.sampled_from(["nan", "-inf", "1e400", "inf", "-1", "0", "1e9", "4194300", "", "x"]) | values


def adapter_bodies(route: str) -> st.SearchStrategy[bytes]:
    valid, nested, fields = ADAPTERS[route]

    def spoil(changes: dict[str, Any], parameters: dict[str, Any]) -> bytes:
        if nested:
            spec = {**valid[nested], **changes}
            if parameters:
                spec["parameters"] = parameters
            return encoded({nested: spec})
        return encoded({**valid, **changes})

    changes = st.dictionaries(st.sampled_from(fields), NUMBERS, max_size=3)
    parameters = st.dictionaries(st.sampled_from(PARAMETERS), NUMBERS, max_size=3) if nested else st.just({})
    return st.one_of(st.builds(spoil, changes, parameters), values.map(encoded), st.binary(max_size=200))


async def test_no_adapter_body_gets_a_5xx(api, settings):
    # Every foreign API's way in, with numbers that are none, types no API expects and deep or odd JSON.
    token = await api.user("fuzzadapters")
    for route in ADAPTERS:
        for body in draw(adapter_bodies(route), 40):
            status, answer, _ = await api.call("POST", route, token=token, data=body,
                                               headers={"Content-Type": "application/json"})
            assert status < 500, (route, body[:300], answer)
