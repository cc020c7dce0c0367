"""Stateful sandboxes through the HTTP API, under runc and gVisor: state kept across runs, figures,
files in and out, interrupts, pause on idle, ends with their reasons, and who may see what."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time
import uuid

import aiohttp
import docker
import psycopg
import pytest
from redis import asyncio as aioredis

from coderund.sandbox_requests import MAX_CONTEXTS, MAX_RESULT_BYTES, MAX_RESULTS
from tests.conftest import api_of, free_port, make_settings, own_server

pytestmark = pytest.mark.timeout(600)


async def create(api, token, **body):
    status, found, _ = await api.call("POST", "/sandboxes", token=token, json=body)
    assert status == 201, found
    return found


async def run(api, token, sandbox, code, **extra):
    status, body, _ = await api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=token, json={"code": code, **extra})
    assert status == 200, body
    return body


async def command(api, token, sandbox, cmd, **extra):
    status, body, _ = await api.call("POST", f"/sandboxes/{sandbox['id']}/commands", token=token, json={"cmd": cmd, **extra})
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
async def owner(runtime_api):
    return await runtime_api.user("sbx")


@pytest.fixture(scope="module")
async def sandbox(runtime_api, owner):
    found = await create(runtime_api, owner, metadata={"test": "shared"})
    yield found
    await runtime_api.call("DELETE", f"/sandboxes/{found['id']}", token=owner)


async def test_python_keeps_variables_imports_and_definitions(runtime_api, owner, sandbox):
    first = await run(runtime_api, owner, sandbox, "import math\ndef area(r):\n    return math.pi * r * r\nx = 41\nprint('set')")
    assert first["stdout"] == "set\n" and first["error"] is None and first["results"] == []
    second = await run(runtime_api, owner, sandbox, "x += 1\nround(area(1), 4), x")
    assert second["results"] == [{"text/plain": "(3.1416, 42)"}]
    assert second["execution_count"] == first["execution_count"] + 1
    rich = await run(runtime_api, owner, sandbox, "import pandas as pd\ndisplay(1)\npd.DataFrame({'a': [1, 2]})")
    assert rich["results"][0] == {"text/plain": "1"}
    assert "<table" in rich["results"][1]["text/html"] and "a" in rich["results"][1]["text/plain"]


async def test_errors_come_with_name_value_and_traceback(runtime_api, owner, sandbox):
    failed = await run(runtime_api, owner, sandbox, "print('before')\ndef f():\n    return 1 / 0\nf()")
    assert failed["stdout"] == "before\n"
    assert failed["error"]["name"] == "ZeroDivisionError" and failed["error"]["value"] == "division by zero"
    assert "line 3, in f" in failed["error"]["traceback"] and "hub.py" not in failed["error"]["traceback"]
    syntax = await run(runtime_api, owner, sandbox, "def (")
    assert syntax["error"]["name"] == "SyntaxError"


async def test_a_matplotlib_figure_comes_back_as_png(runtime_api, owner, sandbox):
    shown = await run(runtime_api, owner, sandbox, "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(4, 3), dpi=50)\n"
                      "plt.plot([1, 3, 2])\nplt.show()", timeout_s=120)
    assert shown["error"] is None, shown
    pngs = [base64.b64decode(r["image/png"]) for r in shown["results"] if "image/png" in r]
    assert len(pngs) == 1 and pngs[0][:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", pngs[0][16:24])
    assert 100 < width <= 220 and 80 < height <= 170  # 200×150 at most, less the tight bounding box's trim
    again = await run(runtime_api, owner, sandbox, "1 + 1")
    assert again["results"] == [{"text/plain": "2"}]  # the figure was closed once returned


async def test_bash_context_keeps_cwd_and_environment(runtime_api, owner, sandbox):
    await run(runtime_api, owner, sandbox, "mkdir -p sub && cd sub && export GREETING=hello", language="bash")
    kept = await run(runtime_api, owner, sandbox, "echo $GREETING from $PWD; exit_code_test() { return 3; }; exit_code_test",
                     language="bash")
    assert kept["stdout"] == "hello from /box/sub\n"
    assert kept["error"] == {"name": "ExitStatus", "value": "exit status 3", "traceback": ""}
    status, contexts, _ = await runtime_api.call("GET", f"/sandboxes/{sandbox['id']}/contexts", token=owner)
    assert status == 200 and {c["id"] for c in contexts["contexts"]} >= {"python", "bash"}


async def test_contexts_are_apart(runtime_api, owner, sandbox):
    status, made, _ = await runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/contexts", token=owner,
                                             json={"language": "python"})
    assert status == 201 and made["language"] == "python"
    await run(runtime_api, owner, sandbox, "only_here = 1", context=made["id"])
    elsewhere = await run(runtime_api, owner, sandbox, "only_here")
    assert elsewhere["error"]["name"] == "NameError"
    assert (await run(runtime_api, owner, sandbox, "only_here", context=made["id"]))["results"] == [{"text/plain": "1"}]
    status, _, _ = await runtime_api.call("DELETE", f"/sandboxes/{sandbox['id']}/contexts/{made['id']}", token=owner)
    assert status == 204
    status, body, _ = await runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=owner,
                                             json={"code": "1", "context": made["id"]})
    assert status == 404 and body["error"] == "not_found"


async def test_javascript_keeps_its_state_awaits_and_is_interrupted(runtime_api, owner, sandbox):
    js = await create(runtime_api, owner, language="javascript")
    try:
        assert js["language"] == "javascript"
        first = await run(runtime_api, owner, js, "let x = 41; function f(a) { return a + 1 }")
        assert first["error"] is None and first["results"] == [] and first["context"] == "javascript"
        second = await run(runtime_api, owner, js, "console.log('hi', x); f(x)")
        assert second["stdout"] == "hi 41\n" and second["results"] == [{"text/plain": "42"}]
        assert second["execution_count"] == first["execution_count"] + 1
        awaited = await run(runtime_api, owner, js, "const v = await Promise.resolve(5); console.log(v * 2); globalThis.y = v")
        assert awaited["stdout"] == "10\n" and awaited["error"] is None
        shown = await run(runtime_api, owner, js, "display({a: [1, 2]}); Promise.resolve(y + 1)")
        assert shown["results"] == [{"text/plain": "{ a: [ 1, 2 ] }"}, {"text/plain": "6"}]
        who = await run(runtime_api, owner, js, "require('fs').writeFileSync('made.txt', 'A'); [process.getuid(), require('fs').readdirSync('.')]")
        assert who["results"] == [{"text/plain": "[ 65534, [ 'made.txt' ] ]"}]
        failed = await run(runtime_api, owner, js, "function g() { throw new TypeError('bad') }\ng()")
        assert (failed["error"]["name"], failed["error"]["value"]) == ("TypeError", "bad")
        assert "at g (<cell" in failed["error"]["traceback"] and "kernel.js" not in failed["error"]["traceback"]
        started = time.monotonic()
        stopped = await run(runtime_api, owner, js, "while (true) {}", timeout_s=1)
        assert time.monotonic() - started < 5
        assert stopped["error"]["name"] == "KeyboardInterrupt" and "timeout of 1 s" in stopped["error"]["value"]
        assert (await run(runtime_api, owner, js, "x"))["results"] == [{"text/plain": "41"}]  # kept
        # Python and bash contexts run beside it, and JavaScript ones beside a python sandbox's Python.
        assert (await run(runtime_api, owner, js, "6 * 7", language="python"))["results"] == [{"text/plain": "42"}]
        beside = await run(runtime_api, owner, sandbox, "import { sep } from 'path'\nawait Promise.resolve(sep + 'x')",
                           language="javascript")
        assert beside["results"] == [{"text/plain": "'/x'"}] and beside["error"] is None, beside
    finally:
        await runtime_api.call("DELETE", f"/sandboxes/{js['id']}", token=owner)


async def test_ndjson_streams_events_as_they_happen(runtime_api, owner, sandbox):
    url = f"{runtime_api.base}/sandboxes/{sandbox['id']}/run"
    code = "import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.4)\n'done'"
    arrived = []
    async with runtime_api.session.post(url, json={"code": code}, headers={"Authorization": f"Bearer {owner}",
                                                                          "Accept": "application/x-ndjson"}) as response:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        async for line in response.content:
            arrived.append((time.monotonic(), json.loads(line)))
    kinds = [event["type"] for _, event in arrived]
    assert kinds == ["stdout", "stdout", "stdout", "result", "execution_count", "end"], kinds
    assert arrived[2][0] - arrived[0][0] > 0.6  # streamed as printed, not all at the end
    assert arrived[3][1]["data"] == {"text/plain": "'done'"}


async def test_a_run_over_its_timeout_is_interrupted_and_the_next_works(runtime_api, owner, sandbox):
    await run(runtime_api, owner, sandbox, "kept = 'yes'")
    started = time.monotonic()
    stopped = await run(runtime_api, owner, sandbox, "while True:\n    pass", timeout_s=1)
    assert time.monotonic() - started < 5
    assert stopped["error"]["name"] == "KeyboardInterrupt" and "timeout of 1 s" in stopped["error"]["value"]
    assert (await run(runtime_api, owner, sandbox, "kept"))["results"] == [{"text/plain": "'yes'"}]
    # One that swallows the interrupt is killed after the grace period; a new interpreter takes over.
    stubborn = await run(runtime_api, owner, sandbox, "import time\nwhile True:\n    try:\n        time.sleep(10)\n"
                         "    except KeyboardInterrupt:\n        pass", timeout_s=1)
    assert "restarted: its state is lost" in stubborn["error"]["value"]
    assert (await run(runtime_api, owner, sandbox, "kept"))["error"]["name"] == "NameError"
    assert (await run(runtime_api, owner, sandbox, "2 * 21"))["results"] == [{"text/plain": "42"}]


async def test_commands(runtime_api, owner, sandbox):
    done = await command(runtime_api, owner, sandbox, ["python3", "-c", "import os, sys; print(sys.stdin.read().upper(),"
                                                       " os.environ['X'], os.getcwd()); sys.exit(4)"],
                         stdin="abc", env={"X": "ex"}, cwd=".")
    assert done == {"stdout": "ABC ex /box\n", "stderr": "", "exit_code": 4, "signal": None, "timed_out": False,
                    "truncated": False}
    slow = await command(runtime_api, owner, sandbox, "sleep 30", timeout_s=0.5)
    assert slow["timed_out"] and slow["signal"] == 9 and slow["exit_code"] is None
    status, body, _ = await runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/commands", token=owner,
                                             json={"cmd": ["no-such-program"]})
    assert status == 400 and "no-such-program" in body["message"]


async def test_a_50_mb_binary_file_round_trip(runtime_api, owner, sandbox):
    data = os.urandom(50 * 1024 * 1024)
    headers = {"Authorization": f"Bearer {owner}"}
    base = f"{runtime_api.base}/sandboxes/{sandbox['id']}/files"
    async with runtime_api.session.put(f"{base}/in/data.bin", data=data, headers=headers) as response:
        assert response.status == 201, await response.text()
        assert await response.json() == {"path": "in/data.bin", "size": len(data)}
    seen = await run(runtime_api, owner, sandbox, "import hashlib\nhashlib.sha256(open('in/data.bin', 'rb').read()).hexdigest()")
    assert seen["results"] == [{"text/plain": repr(hashlib.sha256(data).hexdigest())}]
    await run(runtime_api, owner, sandbox, "open('in/out.bin', 'wb').write(open('in/data.bin', 'rb').read()[::-1])")
    async with runtime_api.session.get(f"{base}/in/out.bin", headers=headers) as response:
        assert response.status == 200 and response.content_type == "application/octet-stream"
        assert await response.read() == data[::-1]
    status, listed, _ = await runtime_api.call("GET", f"/sandboxes/{sandbox['id']}/files?path=in", token=owner)
    assert status == 200 and listed["entries"] == [{"name": "data.bin", "kind": "file", "size": len(data)},
                                                   {"name": "out.bin", "kind": "file", "size": len(data)}]
    for name in ("in/data.bin", "in/out.bin"):
        status, _, _ = await runtime_api.call("DELETE", f"/sandboxes/{sandbox['id']}/files/{name}", token=owner)
        assert status == 204
    status, body, _ = await runtime_api.call("GET", f"/sandboxes/{sandbox['id']}/files/in/data.bin", token=owner)
    assert status == 404 and body["error"] == "not_found"


async def test_no_path_leaves_the_work_folder(runtime_api, owner, sandbox):
    await run(runtime_api, owner, sandbox, "import os\nos.symlink('/etc', 'etc_link')\nos.symlink('/etc/passwd', 'pw')")
    for path in ("a%2F..%2F..%2Fetc%2Fpasswd", "etc_link/passwd", "pw"):
        status, body, _ = await runtime_api.call("GET", f"/sandboxes/{sandbox['id']}/files/{path}", token=owner)
        assert status == 400 and body["error"] == "validation_failed", (path, body)
    status, body, _ = await runtime_api.call("PUT", f"/sandboxes/{sandbox['id']}/files/etc_link/evil", token=owner, data=b"x")
    assert status == 400, body
    status, body, _ = await runtime_api.call("GET", f"/sandboxes/{sandbox['id']}/files?path=etc_link", token=owner)
    assert status == 400, body


async def test_a_file_over_the_disk_quota_is_413_and_leaves_nothing(runtime_api, owner):
    small = await create(runtime_api, owner, disk_mb=16)
    try:
        headers = {"Authorization": f"Bearer {owner}"}
        url = f"{runtime_api.base}/sandboxes/{small['id']}/files/big"
        async with runtime_api.session.put(url, data=b"\0" * (17 * 1024 * 1024), headers=headers) as response:
            assert response.status == 413 and "16 MiB" in (await response.json())["message"]

        async def chunks():  # no length given: the disk fills as it streams
            for _ in range(20):
                yield b"\0" * (1024 * 1024)

        async with runtime_api.session.put(url, data=chunks(), headers=headers) as response:
            assert response.status == 413 and "16 MiB" in (await response.json())["message"]
        status, listed, _ = await runtime_api.call("GET", f"/sandboxes/{small['id']}/files", token=owner)
        assert status == 200 and listed["entries"] == []
        assert (await run(runtime_api, owner, small, "'still here'"))["results"] == [{"text/plain": "'still here'"}]
    finally:
        await runtime_api.call("DELETE", f"/sandboxes/{small['id']}", token=owner)


async def test_idle_pause_stores_the_sandbox_and_a_call_restores_its_files(runtime_api, owner):
    idle = await create(runtime_api, owner, idle_timeout_s=1)
    try:
        await run(runtime_api, owner, idle, "remembered = [1, 2, 3]\nopen('kept.txt', 'w').write('6')")
        container = await container_of_sandbox(runtime_api.settings, idle["id"])
        deadline = time.monotonic() + 20
        found = {}
        while time.monotonic() < deadline and not found.get("stored"):
            await asyncio.sleep(0.5)
            found = (await runtime_api.call("GET", f"/sandboxes/{idle['id']}", token=owner))[1]
        assert found["state"] == "paused" and found["stored"], found
        await wait_for(lambda: not container_exists(container), 15)  # released
        back = await run(runtime_api, owner, idle, "print(open('kept.txt').read())\nremembered")
        assert back["stdout"] == "6\n" and back["error"]["name"] == "NameError"  # files kept, memory not
        found = (await runtime_api.call("GET", f"/sandboxes/{idle['id']}", token=owner))[1]
        assert found["state"] == "running" and found["restored"] == "files"
    finally:
        await runtime_api.call("DELETE", f"/sandboxes/{idle['id']}", token=owner)


async def container_of_sandbox(settings, sandbox_id):
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        row = await (await conn.execute("SELECT container_id FROM sandboxes WHERE id = %s", (sandbox_id,))).fetchone()
    return row[0]


def container_exists(container):
    try:
        docker.from_env().api.inspect_container(container)
        return True
    except docker.errors.NotFound:
        return False


async def test_delete_and_lifetime_end_answer_410_with_the_reason(runtime_api, owner):
    doomed = await create(runtime_api, owner)
    container = await container_of_sandbox(runtime_api.settings, doomed["id"])
    status, _, _ = await runtime_api.call("DELETE", f"/sandboxes/{doomed['id']}", token=owner)
    assert status == 204
    for method, path in (("GET", ""), ("POST", "/run"), ("DELETE", ""), ("GET", "/files/x")):
        status, body, _ = await runtime_api.call(method, f"/sandboxes/{doomed['id']}{path}", token=owner, json={"code": "1"})
        assert status == 410 and body["error"] == "sandbox_ended" and "deleted" in body["message"], (method, path, body)
    await wait_for(lambda: not container_exists(container), 15)

    short = await create(runtime_api, owner, timeout_s=2)
    extended = await create(runtime_api, owner, timeout_s=2)
    status, body, _ = await runtime_api.call("POST", f"/sandboxes/{extended['id']}/timeout", token=owner, json={"timeout_s": 60})
    assert status == 200 and body["expires_at"] > extended["expires_at"]
    await asyncio.sleep(3)
    status, body, _ = await runtime_api.call("POST", f"/sandboxes/{short['id']}/run", token=owner, json={"code": "1"})
    assert status == 410 and "expired" in body["message"]
    assert (await run(runtime_api, owner, extended, "'alive'"))["results"] == [{"text/plain": "'alive'"}]
    await runtime_api.call("DELETE", f"/sandboxes/{extended['id']}", token=owner)


async def wait_for(check, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.2)


async def test_another_users_sandbox_is_404_to_them_and_listing_is_own(runtime_api, owner, sandbox):
    stranger = await runtime_api.user("stranger")
    for method, path in (("GET", ""), ("POST", "/run"), ("GET", "/files"), ("DELETE", "")):
        status, body, _ = await runtime_api.call(method, f"/sandboxes/{sandbox['id']}{path}", token=stranger, json={"code": "1"})
        assert status == 404, (method, path, body)
    status, body, _ = await runtime_api.call("GET", "/sandboxes", token=stranger)
    assert status == 200 and body["sandboxes"] == []
    status, body, _ = await runtime_api.call("GET", "/sandboxes?metadata.test=shared", token=owner)
    assert [s["id"] for s in body["sandboxes"]] == [sandbox["id"]]
    status, body, _ = await runtime_api.call("GET", "/sandboxes?metadata.test=other", token=owner)
    assert body["sandboxes"] == []
    status, body, _ = await runtime_api.call("GET", "/sandboxes/not-a-uuid", token=owner)
    assert status == 404


async def test_bad_requests_are_400_and_change_nothing(runtime_api, owner, sandbox):
    for body in ({"language": "cobol"}, {"memory_mb": 10**9}, {"cpus": 0}, {"timeout_s": 10**9}, {"env": {"1x": "y"}},
                 {"metadata": {"k": 1}}, []):
        status, answer, _ = await runtime_api.call("POST", "/sandboxes", token=owner, json=body)
        assert status == 400, (body, answer)
    for body in ({}, {"code": 1}, {"code": "1", "language": "cobol"}, {"code": "1", "timeout_s": -1}):
        status, answer, _ = await runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=owner, json=body)
        assert status == 400, (body, answer)
    status, _, _ = await runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/commands", token=owner, json={"cmd": []})
    assert status == 400


async def test_the_cap_on_live_sandboxes(server, settings):
    async with own_server(settings, sandbox_max_per_user=2) as api:
        token = await api.user("capped")
        first = await create(api, token)
        await create(api, token)
        status, body, headers = await api.call("POST", "/sandboxes", token=token, json={})
        assert status == 429 and body["error"] == "rate_limited" and "Retry-After" in headers
        await api.call("DELETE", f"/sandboxes/{first['id']}", token=token)
        await create(api, token)


class TestHostile:
    """Programs inside a sandbox harm only it: its hub, its other users' sandboxes and the host stand."""

    async def test_a_fork_bomb_memory_hog_and_kill_minus_one(self, runtime_api, owner):
        box = await create(runtime_api, owner, memory_mb=256)
        try:
            await run(runtime_api, owner, box, "before = 1")
            bomb = await command(runtime_api, owner, box, "bomb() { bomb | bomb & }; bomb; sleep 5", timeout_s=3)
            assert bomb["timed_out"] or bomb["exit_code"] is not None
            await command(runtime_api, owner, box, "kill -9 -1")
            assert (await command(runtime_api, owner, box, "echo alive"))["stdout"] == "alive\n"
            status, hog, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/run", token=owner,
                                                    json={"code": "x = bytearray(1 << 30)"})
            if status == 410:  # gVisor ends the whole sandbox at its memory limit: said as such
                assert runtime_api.runtime == "runsc" and "out_of_memory" in hog["message"], hog
                return
            assert status == 200 and hog["error"] is not None, hog
            after = await run(runtime_api, owner, box, "6 * 7")
            assert after["results"] == [{"text/plain": "42"}], after
        finally:
            await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)

    async def test_the_hub_cannot_be_signalled_read_or_written(self, runtime_api, owner, sandbox):
        probe = await command(runtime_api, owner, sandbox, "id -u; kill -9 1 || echo no-kill; ls /proc/1/fd || echo no-fds;"
                              " (echo forged > /proc/1/fd/1) || echo no-write; true")
        assert probe["stdout"].split() == ["65534", "no-kill", "no-fds", "no-write"], probe
        assert (await run(runtime_api, owner, sandbox, "'hub alive'"))["results"] == [{"text/plain": "'hub alive'"}]

    async def test_no_sandbox_sees_anothers_files_or_processes(self, runtime_api, owner, sandbox):
        other = await create(runtime_api, owner)
        try:
            await run(runtime_api, owner, other, "open('secret-of-other.txt', 'w').write('x')\nimport subprocess\n"
                      "sleeper = subprocess.Popen(['sleep', '61'])")
            looked = await command(runtime_api, owner, sandbox, "find / -name 'secret-of-other*' 2>/dev/null;"
                                   " cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
            assert "secret-of-other.txt" not in looked["stdout"]
            assert "sleep 61" not in looked["stdout"]
            seen = await command(runtime_api, owner, other, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo /box/*")
            assert "sleep 61" in seen["stdout"] and "secret-of-other.txt" in seen["stdout"]  # the probe can see
        finally:
            await runtime_api.call("DELETE", f"/sandboxes/{other['id']}", token=owner)


async def test_a_killed_worker_s_sandboxes_end_with_worker_lost(server, settings, spawn):
    """The sandbox's worker dies (SIGKILL): a call to its sandbox, never persisted, answers 410 worker_lost at
    once; the other workers' heartbeat removes its container."""
    own = make_settings(queue=f"{settings.queue}.lost", port=free_port(), database_url=settings.database_url)
    spawn(own, "--role", "api")
    worker = spawn(own, "--role", "worker")
    async with api_of(own) as api:
        token = await api.user("lost")
        box = await create(api, token)
        container = await container_of_sandbox(settings, box["id"])
        worker.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait)
        started = time.monotonic()  # a call answers at once: the worker's liveness lapses in seconds
        status, body, _ = await api.call("POST", f"/sandboxes/{box['id']}/run", token=token, json={"code": "1"})
        assert status == 410 and "worker_lost" in body["message"], body
        assert time.monotonic() - started < 10
        await wait_for(lambda: not container_exists(container), 30)


async def test_a_client_that_goes_away_interrupts_its_run(runtime_api, owner, sandbox):
    url = f"{runtime_api.base}/sandboxes/{sandbox['id']}/run"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(1):
                await session.post(url, json={"code": "import time\ntime.sleep(60)"}, headers={"Authorization": f"Bearer {owner}"})
    started = time.monotonic()
    # One run at a time per context: this one waits until the abandoned run is interrupted.
    while True:
        status, body, _ = await runtime_api.call("POST", url.removeprefix(runtime_api.base), token=owner, json={"code": "'next'"})
        if status != 409:
            break
        await asyncio.sleep(0.2)
    assert status == 200 and body["results"] == [{"text/plain": "'next'"}]
    assert time.monotonic() - started < 10




class TestBounds:
    """What a call brings back is capped, nothing the user's code does stalls the hub, and a request
    the hub cannot do is refused while the sandbox lives on."""

    async def test_a_runs_results_are_capped_in_count_and_bytes(self, runtime_api, owner, sandbox):
        await run(runtime_api, owner, sandbox, "kept = 'yes'")
        many = await run(runtime_api, owner, sandbox, "for i in range(100):\n    display(i)")
        assert many["results"] == [{"text/plain": str(i)} for i in range(MAX_RESULTS)] and many["truncated"]
        big = await run(runtime_api, owner, sandbox, "s = 'x' * (1 << 20)\nfor i in range(12):\n    display(s)")
        assert big["truncated"] and 0 < len(big["results"]) < 12
        assert sum(len(json.dumps(r)) for r in big["results"]) <= MAX_RESULT_BYTES
        huge = await run(runtime_api, owner, sandbox, "'x' * (20 << 20)")
        assert huge["results"] == [] and huge["truncated"] and huge["error"] is None
        deep = await run(runtime_api, owner, sandbox, "class Deep:\n    def _repr_json_(self):\n        v = []\n"
                         "        for _ in range(200):\n            v = [v]\n        return v\nDeep()")
        assert deep["results"] == [] and deep["truncated"], deep  # nested past any answer's depth
        after = await run(runtime_api, owner, sandbox, "kept")  # the same interpreter: nothing was restarted
        assert after["results"] == [{"text/plain": "'yes'"}] and not after["truncated"]

    async def test_a_download_nobody_reads_holds_a_chunk_in_redis_and_nothing_once_its_client_goes(
            self, runtime_api, owner, sandbox):
        mark = uuid.uuid4().hex.encode()  # at the start of each MiB: this file's chunks, wherever they wait
        await run(runtime_api, owner, sandbox, f"with open('unread.bin', 'wb') as f:\n    for i in range(48):\n"
                  f"        f.seek(i << 20)\n        f.write({mark!r})\n    f.truncate(48 << 20)")
        redis = aioredis.Redis.from_url(runtime_api.settings.redis_url)
        port = int(runtime_api.base.rsplit(":", 1)[1])
        readers = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            for reader in readers:
                reader.sendall(f"GET /sandboxes/{sandbox['id']}/files/unread.bin HTTP/1.1\r\nHost: x\r\n"
                               f"Authorization: Bearer {owner}\r\n\r\n".encode())
            for reader in readers:  # the answers have begun; their readers take nothing
                reader.settimeout(60)
                assert (await asyncio.to_thread(reader.recv, 12, socket.MSG_PEEK)) == b"HTTP/1.1 200"
            held = []
            for _ in range(12):
                held.append(await chunks_held(redis, mark))
                await asyncio.sleep(0.5)
            assert max(held) <= 2 * len(readers), held
        finally:
            for reader in readers:
                reader.close()
        await wait_for_async(lambda: chunks_held(redis, mark), 30)
        await redis.aclose()
        assert (await run(runtime_api, owner, sandbox, "import os\nos.remove('unread.bin')"))["error"] is None

    async def test_a_fifo_or_a_forged_end_never_stalls_the_hub(self, runtime_api, owner, sandbox):
        await run(runtime_api, owner, sandbox, "import os\nos.mkfifo('pipe')")
        status, body, _ = await runtime_api.call("GET", f"/sandboxes/{sandbox['id']}/files/pipe", token=owner)
        assert status == 400 and "not a regular file" in body["message"], body
        status, body, _ = await runtime_api.call("PUT", f"/sandboxes/{sandbox['id']}/files/pipe", token=owner, data=b"x")
        assert status == 400, body
        # The run's code says it ended (its own count, on its events pipe) while it goes on: its
        # interpreter reads nothing, yet the hub takes the next run's 200 KB and serves all else.
        forged = await run(runtime_api, owner, sandbox, FORGED_END)
        assert forged["error"] is None
        pending = asyncio.ensure_future(runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=owner,
                                                         json={"code": "x = 1\n" * 40_000, "timeout_s": 3}))
        alive = await asyncio.wait_for(command(runtime_api, owner, sandbox, ["echo", "alive"]), 60)
        assert alive["stdout"] == "alive\n"
        status, body, _ = await asyncio.wait_for(pending, 60)
        assert status == 200, body
        while (answer := await runtime_api.call("POST", f"/sandboxes/{sandbox['id']}/run", token=owner,
                                                json={"code": "6 * 7"}))[0] == 409:
            await asyncio.sleep(0.2)
        assert answer[1]["results"] == [{"text/plain": "42"}], answer
        await runtime_api.call("DELETE", f"/sandboxes/{sandbox['id']}/files/pipe", token=owner)

    async def test_requests_the_hub_cannot_do_are_4xx_and_the_sandbox_lives_on(self, runtime_api, owner):
        box = await create(runtime_api, owner, memory_mb=512)
        try:
            await run(runtime_api, owner, box, "kept = 1\nimport os\nos.mkdir('ro')\nos.chmod('ro', 0o555)")
            for path in ("a" * 300 + "/x", "ro/x", "ro/sub/x"):
                status, body, _ = await runtime_api.call("PUT", f"/sandboxes/{box['id']}/files/{path}", token=owner,
                                                         data=b"x")
                assert status == 400 and body["error"] == "validation_failed", (path, body)
            for asked in ({"cmd": ["echo", "a\0b"]}, {"cmd": ["env"], "env": {"A": "x\0y"}}):
                status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/commands", token=owner,
                                                         json=asked)
                assert status == 400 and "NUL" in body["message"], body
            # A bash run's code waits in /tmp: with /tmp full it is refused, and runs once there is room.
            await command(runtime_api, owner, box, "cat /dev/zero > /tmp/fill; true")
            status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/run", token=owner,
                                                     json={"code": "echo hi", "language": "bash"})
            assert status == 409 and "/tmp is full" in body["message"], body
            await command(runtime_api, owner, box, ["rm", "/tmp/fill"])
            assert (await run(runtime_api, owner, box, "echo hi", language="bash"))["stdout"] == "hi\n"
            # Contexts up to the cap, then 409.
            while True:
                status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/contexts", token=owner,
                                                         json={"language": "bash"})
                if status != 201:
                    break
            assert status == 409 and f"at most {MAX_CONTEXTS} contexts" in body["message"], body
            status, listed, _ = await runtime_api.call("GET", f"/sandboxes/{box['id']}/contexts", token=owner)
            assert len(listed["contexts"]) == MAX_CONTEXTS
            assert (await run(runtime_api, owner, box, "kept"))["results"] == [{"text/plain": "1"}]  # its state kept
        finally:
            await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)

    async def test_no_path_the_hub_resolves_can_be_raced_and_proc_1_stays_closed(self, runtime_api, owner):
        """A command's folder swapped for a link to /root (renameat2 RENAME_EXCHANGE) as it is
        entered; a name flipping between a folder and a link to /proc/1 as a file is read; and the
        hub's environment looked for all along, while the hub takes nobody's identity for file work."""
        box = await create(runtime_api, owner)
        try:
            await run(runtime_api, owner, box, f"import os, subprocess, sys, time\nracers = [subprocess.Popen([sys.executable, "
                      f"'-c', code]) for code in {[SWAPPER, FLIPPER, PROBER]!r}]\nwhile not os.path.lexists('l'):\n"
                      "    time.sleep(0.01)")
            entered, read = [], []
            for _ in range(100):
                status, body, _ = await runtime_api.call("POST", f"/sandboxes/{box['id']}/commands", token=owner,
                                                         json={"cmd": ["pwd", "-P"], "cwd": "d"})
                assert status in (200, 400), body  # 400: it was the link when looked at
                entered += [body["stdout"]] if status == 200 else []
                async with runtime_api.session.get(f"{runtime_api.base}/sandboxes/{box['id']}/files/x/environ",
                                                   headers={"Authorization": f"Bearer {owner}"}) as response:
                    read += [await response.read()] if response.status == 200 else []
            assert entered and all(line.startswith("/box/") for line in entered), set(entered)
            assert all(data == b"decoy" for data in read), {data[:80] for data in read}
            probed = await command(runtime_api, owner, box, "cat /proc/1/environ 2>/dev/null | wc -c; cat probe-read 2>/dev/null; true")
            assert probed["stdout"] == "0\n", probed
        finally:
            await runtime_api.call("DELETE", f"/sandboxes/{box['id']}", token=owner)


FORGED_END = ("import os, sys, time\ncount = int(sys._getframe().f_code.co_filename[6:-1])\n"
              "events = int(open('/proc/self/cmdline').read().split('\\0')[3])\n"
              "os.write(events, b'{\"type\": \"done\", \"error\": null, \"count\": %d}\\n' % count)\ntime.sleep(30)")
SWAPPER = ("import ctypes, os\nos.mkdir('d')\nos.symlink('/root', 'l')\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "while True:\n    libc.renameat2(-100, b'd', -100, b'l', 2)")
FLIPPER = ("import os\nos.mkdir('real')\nopen('real/environ', 'w').write('decoy')\nwhile True:\n"
           "    os.rename('real', 'x')\n    os.rename('x', 'real')\n    os.symlink('/proc/1', 'x')\n    os.unlink('x')")
# gVisor lets anyone open /proc/1/environ (its mode is 0444 there): the hub's is empty.
PROBER = ("while True:\n    try:\n        if open('/proc/1/environ', 'rb').read():\n"
          "            open('probe-read', 'w').write('read')\n    except OSError:\n        pass")


async def chunks_held(redis, mark):
    """How many chunks of the file marked so wait in reply streams."""
    held = 0
    async for key in redis.scan_iter("coderund:sandboxes:reply:*"):
        held += sum(fields.get(b"d", b"").startswith(mark) for _, fields in await redis.xrange(key, count=100))
    return held


async def wait_for_async(held, timeout_s):
    """Until held() is 0."""
    deadline = time.monotonic() + timeout_s
    while (left := await held()):
        assert time.monotonic() < deadline, f"{left} still held"
        await asyncio.sleep(0.5)
