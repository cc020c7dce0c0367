"""Tasks end to end: API → PostgreSQL → RabbitMQ → worker → Docker sandbox → result."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from coderund import plugins
from coderund.api.keys import SESSION_COOKIE
from coderund.config import DEFAULT_PLUGINS_DIR
from coderund.domain import MAX_CODE_BYTES

HELLO = {
    "python": 'print("hello from python")',
    "c": '#include <stdio.h>\nint main(void) { puts("hello from c"); return 0; }\n',
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello from go") }\n',
}


@pytest.fixture
async def token(api):
    return await api.user()


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_hello_world(api, token, language):
    result = await api.run(token, language=language, code=HELLO[language])
    assert result["verdict"] == "ok", result
    assert result["status"] == "ready"
    assert result["stdout"] == result["result"] == f"hello from {language}\n"
    assert result["exit_code"] == 0 and result["signal"] is None and result["truncated"] is False
    assert result["language"] == language
    assert result["wall_ms"] >= 0 and result["time_ms"] >= 0 and result["memory_kb"] > 0
    assert result["created_at"] <= result["started_at"] <= result["finished_at"]


async def test_stdin_and_args(api, token):
    code = "import sys\nprint(sys.argv[1:])\nprint(input()[::-1])\nprint(sys.stdin.read().upper(), end='')"
    result = await api.run(token, language="python3", code=code, stdin="abc\nrest of it\n", args=["one", "two words"])
    assert result["verdict"] == "ok", result
    assert result["stdout"] == "['one', 'two words']\ncba\nREST OF IT\n"
    assert result["language"] == "python"


async def test_c_reads_stdin_and_args(api, token):
    code = '#include <stdio.h>\nint main(int c, char **v) { int a, b; scanf("%d %d", &a, &b); printf("%s %d\\n", v[1], a + b); }'
    result = await api.run(token, language="gcc", code=code, stdin="2 40", args=["sum"])
    assert result["verdict"] == "ok", result
    assert result["stdout"] == "sum 42\n"


@pytest.mark.parametrize(
    "language, code, needle",
    [("c", "int main(void) { return missing; }", "missing"), ("go", "package main\nfunc main() { x := 1 }\n", "x")],
)
async def test_compile_errors(api, token, language, code, needle):
    result = await api.run(token, language=language, code=code)
    assert result["verdict"] == "compile_error", result
    assert needle in result["compile_output"] and result["stdout"] == ""


async def test_exit_code(api, token):
    result = await api.run(token, language="python", code="import sys\nprint('bye')\nsys.exit(3)")
    assert result["verdict"] == "runtime_error" and result["exit_code"] == 3 and result["stdout"] == "bye\n"


async def test_segfault_is_signal_11(api, token):
    result = await api.run(token, language="c", code="int main(void) { volatile int *p = 0; return *p; }")
    assert result["verdict"] == "runtime_error", result
    assert result["signal"] == 11 and result["exit_code"] is None


async def test_python_exception_is_runtime_error(api, token):
    result = await api.run(token, language="python", code="raise ValueError('boom')")
    assert result["verdict"] == "runtime_error" and "ValueError: boom" in result["stderr"]


async def test_infinite_loop_hits_the_time_limit(api, token):
    result = await api.run(token, language="python", code="while True: pass", limits={"time_ms": 1000})
    assert result["verdict"] == "time_limit", result
    assert 1000 <= result["wall_ms"] < 3000


async def test_sleeping_past_the_wall_limit(api, token):
    result = await api.run(token, language="python", code="import time; time.sleep(30)", limits={"time_ms": 500})
    assert result["verdict"] == "time_limit" and result["wall_ms"] < 2000


async def test_memory_limit(api, token):
    code = "x = bytearray(512 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')"
    result = await api.run(token, language="python", code=code, limits={"memory_mb": 64})
    assert result["verdict"] == "memory_limit", result
    assert "survived" not in result["stdout"]


async def test_output_flood_is_cut(api, token, settings):
    result = await api.run(token, language="python", code="while True: print('x' * 1000)")
    assert result["verdict"] == "output_limit", result
    assert result["truncated"] is True
    assert len(result["stdout"]) == settings.output_limit


async def test_non_utf8_and_nul_bytes_in_output(api, token):
    code = "import sys\nsys.stdout.buffer.write(b'a\\xff\\x00b\\n')\nsys.stderr.buffer.write(b'\\xfe')"
    result = await api.run(token, language="python", code=code)
    assert result["verdict"] == "ok", result
    assert result["stdout"] == "a\ufffd\x00b\n" and result["stderr"] == "\ufffd"


async def test_no_network(api, token):
    code = (
        "import socket\n"
        "for host, port in [('127.0.0.1', 5432), ('127.0.0.1', 5672), ('127.0.0.1', 6379)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2)\n"
        "        print('CONNECTED', host, port)\n"
        "    except OSError as e:\n"
        "        print('blocked', host, port)\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    result = await api.run(token, language="python", code=code)
    assert result["verdict"] == "ok", result
    assert "CONNECTED" not in result["stdout"]
    assert result["stdout"].count("blocked") == 3
    assert "['lo']" in result["stdout"]


async def test_runs_unprivileged_on_a_read_only_root(api, token):
    code = (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "for path in ['/etc/owned', '/usr/owned', '/owned']:\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "print(open('scratch.txt').read())\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "print(sorted(k for k in os.environ))\n"
    )
    result = await api.run(token, language="python", code=code)
    assert result["verdict"] == "ok", result
    lines = result["stdout"].splitlines()
    assert lines[0] == "65534 65534"
    assert "WROTE" not in result["stdout"] and lines[1:4] == ["refused 30"] * 3  # EROFS
    assert lines[4] == "ok"
    assert lines[5] == "0000000000000000"  # no capabilities
    # Nothing of the worker's environment leaks in.
    assert not any(name in lines[6] for name in ("CODERUND", "DATABASE", "AMQP", "REDIS"))


async def test_another_users_task_is_404(api, token):
    task_id = await api.submit(token, language="python", code="print(1)")
    other = await api.user("other")
    for path in (f"/status/{task_id}", f"/result/{task_id}"):
        status, body, _ = await api.call("GET", path, token=other)
        assert status == 404 and body["error"] == "not_found"
    for bad in (str(uuid.uuid4()), "not-a-uuid", "1"):
        assert (await api.call("GET", f"/status/{bad}", token=token))[0] == 404
    assert (await api.result(token, task_id))["stdout"] == "1\n"


async def test_unsupported_language(api, token):
    status, body, _ = await api.call("POST", "/task", token=token, json={"language": "brainfuck", "code": "x"})
    assert status == 400 and body["error"] == "unsupported_language"
    for name in HELLO:
        assert name in body["message"]


async def test_oversized_code_is_413(api, token):
    code = "#" * (MAX_CODE_BYTES + 1)
    status, body, _ = await api.call("POST", "/task", token=token, json={"language": "python", "code": code})
    assert status == 413 and body["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "task, field",
    [
        ({"language": "python"}, "code"),
        ({"code": "x"}, "language"),
        ({"language": "python", "code": 5}, "code"),
        ({"language": "python", "code": "x", "args": "a"}, "args"),
        ({"language": "python", "code": "x", "limits": {"time_ms": 0}}, "time_ms"),
        ({"language": "python", "code": "x", "limits": {"cpus": 4}}, "cpus"),
        ({"language": "python", "code": "x", "limits": {"time_ms": 20001}}, "time_ms"),
        ({"language": "python", "code": "x", "limits": {"memory_mb": 4096}}, "memory_mb"),
    ],
)
async def test_invalid_tasks_are_400_and_leave_nothing(api, token, settings, task, field):
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        before = (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0]
        status, body, _ = await api.call("POST", "/task", token=token, json=task)
        after = (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0]
    assert status == 400 and body["error"] == "validation_failed" and field in body["message"]
    assert before == after


async def test_in_progress_then_ready(api, token):
    task_id = await api.submit(token, language="python", code="import time; time.sleep(1.5); print('done')")
    status, body, headers = await api.call("GET", f"/result/{task_id}", token=token)
    assert status == 202 and body == {"status": "in_progress"} and int(headers["Retry-After"]) >= 1
    assert (await api.call("GET", f"/status/{task_id}", token=token))[1] == {"status": "in_progress"}
    result = await api.result(token, task_id)
    assert result["stdout"] == "done\n"
    assert (await api.call("GET", f"/status/{task_id}", token=token))[1] == {"status": "ready"}


async def test_seed_dialects_with_a_cookie_only_client(api):
    """The older client: 'login' for username, 'translator' for language, and only the cookie."""
    name = f"seed_{uuid.uuid4().hex[:10]}"
    assert (await api.call("POST", "/register", json={"login": name, "password": "password123"}))[0] == 201
    status, body, _ = await api.call("POST", "/login", json={"login": name, "password": "password123"})
    cookies = {SESSION_COOKIE: body["token"]}
    status, body, headers = await api.call("POST", "/task", cookies=cookies,
                                           json={"translator": "python3", "code": "print(6 * 7)"})
    assert status == 201 and headers["Location"] == f"/result/{body['task_id']}"
    task_id = body["task_id"]
    for _ in range(300):
        status, body, _ = await api.call("GET", f"/status/{task_id}", cookies=cookies)
        if body["status"] == "ready":
            break
        await asyncio.sleep(0.2)
    status, body, _ = await api.call("GET", f"/result/{task_id}", cookies=cookies)
    assert status == 200 and body["result"] == "42\n"


async def test_languages_listing(api):
    status, body, _ = await api.call("GET", "/languages")
    assert status == 200
    by_name = {lang["name"]: lang for lang in body["languages"]}
    assert set(HELLO) < set(by_name) and len(by_name) == len(plugins.load(DEFAULT_PLUGINS_DIR).all)
    assert "python3" in by_name["python"]["aliases"]
    assert by_name["c"]["compiled"] and not by_name["python"]["compiled"]
    assert by_name["go"]["max_limits"]["time_ms"] >= by_name["go"]["limits"]["time_ms"]
    assert by_name["java"]["entry_file"] == "Main.java" and by_name["kotlin"]["compile_limits"]["time_ms"] == 120000
    assert "compile_limits" not in by_name["python"]
    # Each language's example, the playground's starting program (the conformance suite runs them all).
    assert by_name["python"]["example"] == plugins.load(DEFAULT_PLUGINS_DIR).get("python").example
    assert all(lang["example"] for lang in body["languages"])


async def test_code_that_misses_the_entry_convention_is_refused_clearly(api):
    token = await api.user("entry")
    status, body, _ = await api.call("POST", "/task", token=token, json={
        "language": "java", "code": "public class Solution { public static void main(String[] a) {} }"})
    assert status == 400 and body["error"] == "validation_failed" and "public class Main" in body["message"]
