"""A stateful sandbox's hub on its own, under runc and gVisor: hypothesis's requests, well formed or
not (wrong types in every field, NULs, '..', NaN timeouts, unknown operations, lines that are no
JSON or no object, deep nesting), each get an end event, and none ends the hub: it answers a run
after them all."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import strategies as st

from coderund.daemon import make_sandbox
from coderund.sandbox.stateful import Hub, Spec
from tests.conftest import RUNTIMES
from tests.test_fuzz import draw, texts, values

pytestmark = pytest.mark.timeout(900)
EXAMPLES = 300
OPS = ["ping", "run", "interrupt", "command", "write", "read", "list", "delete", "context_create", "context_list",
       "context_delete", "context_restart", "attach", "commands", "input", "close_stdin", "signal", "stat", "mkdir",
       "move", "no-such-op"]
paths = st.sampled_from([".", "a", "a/b/c", "../x", "a/../../x", "/etc/passwd", "x" * 300 + "/y", "a\0b", "", "f"]) | texts
PLAUSIBLE = {
    "code": st.sampled_from(["1 + 1", "print('x')", "display(1)", "echo hi; cd /tmp", "raise ValueError(1)"]) | texts,
    "language": st.sampled_from(["python", "bash", "javascript", "cobol"]),
    "context": st.sampled_from(["python", "bash", "nope", None]) | texts,
    "timeout_s": st.floats(0.1, 5) | st.sampled_from([0, -1, 1e9, float("nan"), float("inf")]),
    "cmd": st.lists(st.sampled_from(["echo", "true", "ls", "no-such-program", "a\0b", "", "/box"]) | texts, max_size=4),
    "cwd": st.sampled_from([".", "a"]) | paths, "path": paths,
    "env": st.dictionaries(st.sampled_from(["A", "PATH", "A=B", "", "\0"]) | texts, texts, max_size=3), "stdin": texts,
    "data": st.sampled_from(["", "eA==", "not base64!"]) | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    "append": st.booleans(), "offset": st.integers(-5, 1 << 64), "target": texts,
    "open_stdin": st.booleans(), "announce": st.booleans(), "tag": st.sampled_from(["t", None]) | texts,
    "pid": st.integers(-1, 1 << 40) | values, "signal": st.sampled_from([9, 15, 2, None]) | values,
    "source": paths, "destination": paths, "depth": st.integers(-1, 40) | values, "detail": st.booleans() | values,
}
operations = st.sampled_from(OPS)
requests = st.one_of(
    st.builds(lambda op, rest: {"op": op, **rest}, operations, st.fixed_dictionaries(PLAUSIBLE)),
    st.builds(lambda op, rest: {"op": op, **rest}, operations, st.fixed_dictionaries({}, optional=dict.fromkeys(PLAUSIBLE, values))),
    st.builds(lambda op, rest: {"op": op, **rest}, values, st.dictionaries(texts, values, max_size=4)),
)
# Lines no worker sends: no JSON, JSON that is no object, nesting past any parser's depth.
lines = (st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")) | values.map(lambda v: json.dumps(v).encode())
         | st.integers(1, 50_000).map(lambda n: b"[" * n + b"]" * n))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_the_hub_answers_whatever_it_is_sent_and_lives_on(settings, runtime):
    sandbox = make_sandbox(dataclasses.replace(settings, runtime=runtime), f"hub-fuzz-{runtime}", "hub-fuzz")
    hub = await Hub.start(sandbox.engine, Spec("coderund/python:bookworm", 512, 1.0, 64), {"coderund.hub-fuzz": "1"})
    try:
        for request in draw(requests, EXAMPLES):
            events = await asyncio.wait_for(collect(hub, request), 120)
            assert events[-1]["type"] == "end", (request, events)
            error = events[-1].get("error")
            assert error is None or isinstance(error, dict), (request, events)
        for line in draw(lines, 50):
            hub.box.writer.write(line + b"\n")  # answered with no id, which no call waits for
            assert (await asyncio.wait_for(hub.ask({"op": "ping"}), 60))["type"] == "end", line
        answered = await asyncio.wait_for(collect(hub, {"op": "run", "context": "python", "code": "6 * 7"}), 60)
        assert [e["data"] for e in answered if e["type"] == "result"] == [{"text/plain": "42"}], answered
        assert hub.alive
    finally:
        sandbox.engine.discard(hub.box)
        await sandbox.engine.close()


async def collect(hub: Hub, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [event async for event in hub.call(request)]
