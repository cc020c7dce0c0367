"""Piston v2: its translation on its own (pure), and its clients against a live coderund."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from coderund import plugins as plugin_loader
from coderund.compat import piston
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import Limits, Result, Task, Verdict

PLUGINS = plugin_loader.load(DEFAULT_PLUGINS_DIR)


def test_runtimes_are_the_plugins_with_semver_versions():
    listed = {r["language"]: r for r in piston.runtimes(PLUGINS)}
    assert len(listed) == len(PLUGINS.all) and listed["python"]["version"] == "3.11.0"
    assert listed["c++"]["aliases"] == ["cpp", "cxx", "g++"] and listed["javascript"]["runtime"] == "node"
    assert "py" in listed["python"]["aliases"] and listed["csharp"]["runtime"] == "mono"
    assert listed["sqlite3"]["aliases"] == ["sql", "sqlite"] and "asm64" in listed["nasm64"]["aliases"]


@pytest.mark.parametrize("wanted, have, ok", [
    ("*", "3.11.0", True), ("3", "3.11.0", True), ("3.11", "3.11.0", True), ("3.11.0", "3.11.0", True),
    ("3.10", "3.11.0", False), ("^3.9", "3.11.0", True), ("^4", "3.11.0", False), ("~3.11", "3.11.0", True),
    ("~3.10", "3.11.0", False), (">=3.10", "3.11.0", True), (">3.11.0", "3.11.0", False), ("3.x", "3.11.0", True),
    (">=3 <4", "3.11.0", True), ("nonsense", "3.11.0", False),
])
def test_version_ranges(wanted, have, ok):
    assert piston.matches(wanted, have) is ok


def test_an_execute_body_becomes_a_task_request():
    request = piston.parse_execute({"language": "py", "version": "3", "stdin": "x", "args": ["a"], "run_timeout": 3000,
                                    "run_memory_limit": 64 * 1024 * 1024, "files": [
                                        {"name": "main.py", "content": "print(input())"},
                                        {"name": "util.py", "content": base64.b64encode(b"X = 1").decode(), "encoding": "base64"},
                                        {"content": "41", "encoding": "hex"}]}, PLUGINS)
    assert request.language == "python" and request.code == "print(input())" and request.stdin == "x\n"
    assert request.files == (("util.py", "X = 1"), ("file2.code", "A")) and request.args == ("a",)
    assert request.limits == {"time_ms": 3000, "memory_mb": 64}
    source = "public class HelloWorld { public static void main(String[] a) { new HelloWorld(); System.out.println(\"OK\"); } }"
    java = piston.parse_execute({"language": "java", "version": "*", "files": [{"name": "test.java", "content": source}]}, PLUGINS)
    plugin = PLUGINS.get("java")
    assert java.code == source and java.program.source_file == "HelloWorld.java" and java.program.compile == plugin.compile
    assert java.program.run == (*plugin.run[:-1], "HelloWorld") and plugin.run[-1] == "Main"
    main = piston.parse_execute({"language": "java", "version": "*", "files": [{"content": "public class Main {}"}]}, PLUGINS)
    assert main.program is None


@pytest.mark.parametrize("body, message", [
    ({}, "language is required as a string"), ({"language": "python"}, "version is required as a string"),
    ({"language": "python", "version": "*"}, "files is required as an array"),
    ({"language": "python", "version": "*", "files": [{}]}, "files[0].content is required as a string"),
    ({"language": "brainfuck", "version": "*", "files": [{"content": "x"}]}, "brainfuck-* runtime is unknown"),
    ({"language": "python", "version": "2", "files": [{"content": "x"}]}, "python-2 runtime is unknown"),
    ({"language": "python", "version": "*", "files": [{"content": "x"}], "run_timeout": "1"}, "If specified, run_timeout must be a number"),
    ({"language": "python", "version": "*", "files": [{"content": "!!", "encoding": "base64"}]}, "files[0].content is not valid base64"),
    ({"language": "java", "version": "*", "files": [{"content": "public class " + "C" * 251 + " {}"}]},
     "files[0]'s public class name is too long: its file name would be over 255 bytes"),
    ({"language": "java", "version": "*", "files": [{"content": "public class Hi {}"}, {"name": "Hi.java", "content": ""}]},
     "files[1].name must be a string other than the entry file"),
])
def test_errors_are_pistons(body, message):
    assert piston.parse_execute(body, PLUGINS) == message


def task(result: Result, language: str = "python") -> Task:
    return Task(uuid.uuid4(), 1, language, "", "", [], Limits(5000, 128), result=result,
                compat={"api": "piston", "language": language, "version": "3.11.0"})


def test_results_in_pistons_shape():
    ok = piston.result(task(Result(Verdict.OK, exit_code=0, stdout=b"hi\n", stderr=b"w\n", time_ms=5, wall_ms=9, memory_kb=8000)),
                       PLUGINS.get("python"))
    assert ok == {"language": "python", "version": "3.11.0", "run": {
        "stdout": "hi\n", "stderr": "w\n", "output": "hi\nw\n", "code": 0, "signal": None, "message": None, "status": None,
        "cpu_time": 5, "wall_time": 9, "memory": 8000 * 1024}}
    killed = piston.result(task(Result(Verdict.TIME_LIMIT, signal=9)), PLUGINS.get("python"))["run"]
    assert killed["status"] == "TO" and killed["signal"] == "SIGKILL"
    cancelled = piston.result(task(Result(Verdict.CANCELLED)), PLUGINS.get("python"))["run"]
    assert cancelled["status"] == "XX" and cancelled["signal"] == "SIGKILL" and cancelled["code"] is None
    segv = piston.result(task(Result(Verdict.RUNTIME_ERROR, signal=11)), PLUGINS.get("python"))["run"]
    assert segv["status"] == "SG" and segv["signal"] == "SIGSEGV"
    broken = piston.result(task(Result(Verdict.COMPILE_ERROR, exit_code=1, compile_output=b"error"), "c"), PLUGINS.get("c"))
    assert broken["compile"]["code"] == 1 and broken["compile"]["stderr"] == "error" and broken["run"] == broken["compile"]


JAVA = """public class HelloWorld {
    public static void main(String[] args) {
        System.out.println("HelloWorld says " + args[0]);
        System.out.println(HelloWorld.class.getName());
        System.out.println(new Throwable().getStackTrace()[0].getClassName());
    }
}
"""


async def test_a_java_class_runs_under_its_own_name(runtime_api):
    """Piston runs `java File.java`, whatever the public class is called: its name stays the program's,
    in what it prints of it and in its strings (as Piston's multi_request test's HelloWorld in Test.java)."""
    token = await runtime_api.user("pistonjava")
    status, answer, _ = await runtime_api.call("POST", "/piston/api/v2/execute", token=token, json={
        "language": "java", "version": "*", "args": ["hi"], "files": [{"name": "Test.java", "content": JAVA}]})
    assert status == 200, answer
    assert answer["compile"]["code"] == 0 and answer["run"]["code"] == 0, answer
    assert answer["run"]["stdout"] == "HelloWorld says hi\nHelloWorld\nHelloWorld\n"


CLIENT = """
import { piston } from "piston-client";
const client = piston({ server: process.argv[2] });
const runtimes = await client.runtimes();
const python = await client.execute("python", "import sys\\nprint('hi', sys.argv[1:], input())", { stdin: "there" });
const c = await client.execute({ language: "c", files: [{ content: "#include <stdio.h>\\nint main(){puts(\\"from c\\");}" }] });
const bad = await client.execute("python", "x", { version: "2.7" });
console.log(JSON.stringify({ runtimes, python, c, bad }));
"""


async def test_piston_client_from_npm_runs_unchanged(api, tmp_path):
    """The npm piston-client 1.0.2 (installed by scripts/test-env) against /piston/<key>: it can
    send no header, so the key is in the base URL; it posts JSON as text/plain."""
    token = await api.user("piston")
    status, key, _ = await api.call("POST", "/account/api-keys", token=token, json={"name": "piston"})
    modules = Path(__file__).resolve().parents[2] / ".cache" / "npm" / "node_modules"
    assert (modules / "piston-client").is_dir(), "scripts/test-env installs piston-client"
    script = tmp_path / "client.mjs"
    script.write_text(CLIENT)
    (tmp_path / "node_modules").symlink_to(modules)
    done = await asyncio.to_thread(subprocess.run, ["node", str(script), f"{api.base}/piston/{key['key']}"],
                                   capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert {"language": "python", "version": "3.11.0", "aliases": ["py", "py3", "python3"]} in answer["runtimes"]
    assert answer["python"]["run"]["stdout"] == "hi ['1', '2', '3'] there\n" and answer["python"]["run"]["code"] == 0
    assert answer["python"]["language"] == "python" and answer["python"]["version"] == "3.11.0"
    assert answer["c"]["run"]["stdout"] == "from c\n" and answer["c"]["compile"]["code"] == 0
    assert answer["bad"] == {"message": "python-2.7 runtime is unknown"}
    assert (await api.call("GET", "/piston/api/v2/runtimes"))[0] == 401
    assert (await api.call("GET", "/piston/crd_wrong/api/v2/runtimes"))[0] == 401
    status, runtimes, _ = await api.call("GET", "/piston/api/v2/runtimes", token=key["key"])
    assert status == 200 and len(runtimes) == len(PLUGINS.all)


async def test_the_websocket_protocol(api):
    token = await api.user("pistonws")
    url = f"{api.base}/piston/api/v2/connect"
    headers = {"Authorization": f"Bearer {token}"}
    async with api.session.ws_connect(url, headers=headers) as ws:
        await ws.send_json({"type": "init", "language": "python", "version": "*",
                            "files": [{"content": "print('ready', flush=True)\nprint('got', input())"}]})
        seen = [await ws.receive_json(timeout=30) for _ in range(3)]
        assert seen[0] == {"type": "runtime", "language": "python", "version": "3.11.0"}
        assert seen[1] == {"type": "stage", "stage": "run"} and seen[2] == {"type": "data", "stream": "stdout", "data": "ready\n"}
        await ws.send_json({"type": "data", "stream": "stdin", "data": "more\n"})
        assert (await ws.receive_json(timeout=30)) == {"type": "data", "stream": "stdout", "data": "got more\n"}
        assert (await ws.receive_json(timeout=30)) == {"type": "exit", "stage": "run", "code": 0, "signal": None}
        closing = await ws.receive(timeout=30)
        assert closing.type.name in ("CLOSE", "CLOSED", "CLOSING") and ws.close_code == 4999
    async with api.session.ws_connect(url, headers=headers) as ws:  # a signal ends the run: killed
        await ws.send_json({"type": "init", "language": "python", "version": "*",
                            "files": [{"content": "import time\nprint('ready', flush=True)\ntime.sleep(60)"}]})
        seen = [await ws.receive_json(timeout=30) for _ in range(3)]
        assert seen[2] == {"type": "data", "stream": "stdout", "data": "ready\n"}
        await ws.send_json({"type": "signal", "signal": "SIGTERM"})
        assert (await ws.receive_json(timeout=30)) == {"type": "exit", "stage": "run", "code": None, "signal": "SIGKILL"}
        await ws.receive(timeout=30)
        assert ws.close_code == 4999
    async with api.session.ws_connect(url, headers=headers) as ws:  # no init within a second
        await ws.receive(timeout=10)
        assert ws.close_code == 4001
    async with api.session.ws_connect(url, headers=headers) as ws:
        await ws.send_json({"type": "data", "stream": "stdin", "data": "x"})
        await ws.receive(timeout=10)
        assert ws.close_code == 4003
    async with api.session.ws_connect(url, headers=headers) as ws:
        await ws.send_json({"type": "init", "language": "nope", "version": "*", "files": [{"content": "x"}]})
        assert (await ws.receive_json(timeout=10)) == {"type": "error", "message": "nope-* runtime is unknown"}
        await ws.receive(timeout=10)
        assert ws.close_code == 4002
