"""Defects found by probing the live API, each with the test that failed before its fix."""
from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
import time

import docker
import psycopg
import pytest

from coderund.daemon import make_sandbox
from coderund.sandbox.engine import SandboxError, SandboxRefused, Shape
from coderund.sandbox.engine_http import EngineCallFailed
from tests.conftest import env_of, own_server

NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("path", ["/register", "/login", "/task"])
@pytest.mark.parametrize("body", [NESTED, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, b'{"limits": {"time_ms": 1' + b"0" * 5000 + b'}}'],
                         ids=["nested arrays", "nested objects", "a number past the digit limit"])
async def test_json_the_parser_cannot_take_is_400(api, path, body):
    token = await api.user("json")
    status, answer, _ = await api.call("POST", path, token=token, data=body, headers={"Content-Type": "application/json"})
    assert status == 400 and answer["error"] in ("invalid_json", "validation_failed"), answer


@pytest.mark.parametrize("limits, field, minimum", [({"memory_mb": 1}, "memory_mb", 16), ({"time_ms": 1}, "time_ms", 100),
                                                    ({"memory_mb": 8}, "memory_mb", 16)])
async def test_limits_below_what_can_run_are_400_naming_the_minimum(api, settings, limits, field, minimum):
    token = await api.user("limits")
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        before = (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0]
        status, body, _ = await api.call("POST", "/task", token=token, json={"language": "python", "code": "1", "limits": limits})
        assert status == 400 and body["error"] == "validation_failed"
        assert f"'limits.{field}'" in body["message"] and f"at least {minimum}" in body["message"]
        assert (await (await conn.execute("SELECT count(*) FROM tasks")).fetchone())[0] == before
    status, body, _ = await api.call("GET", "/languages")
    python = next(lang for lang in body["languages"] if lang["name"] == "python")
    assert python["min_limits"] == {"time_ms": 100, "memory_mb": 16}


async def test_the_minimum_limits_run_and_report_consistently(api):
    token = await api.user("limits")
    smallest = {"time_ms": 100, "memory_mb": 16}
    quick = await api.run(token, language="python", code="print('fits')", limits=smallest)
    assert quick["verdict"] == "ok" and quick["stdout"] == "fits\n" and quick["exit_code"] == 0
    busy = await api.run(token, language="python", code="print('started', flush=True)\nwhile True: pass", limits=smallest)
    # A time limit has the wall time that triggered it and no clean exit.
    assert busy["verdict"] == "time_limit" and busy["exit_code"] is None and busy["signal"] == 9
    assert busy["wall_ms"] >= 100


async def test_an_engine_refusal_is_final_not_a_platform_failure(settings):
    sandbox = make_sandbox(settings, "refusal-test", "refusal-test-deployment")
    try:
        with pytest.raises(SandboxRefused, match="(?i)memory"):
            await sandbox.engine.make(Shape("coderund/python:bookworm", 1), {})
    finally:
        await sandbox.engine.close()
    assert not docker.from_env().api.containers(all=True, filters={"label": "coderund.worker=refusal-test"})


async def test_engine_calls_on_a_missing_container_fail_as_the_platform_and_removal_stays_quiet(settings):
    sandbox = make_sandbox(settings, "missing-test", "missing-test-deployment")
    try:
        with pytest.raises(SandboxError, match="404"):
            await sandbox.engine.state("coderund-no-such-container")
        with pytest.raises(EngineCallFailed) as failed:
            await sandbox.engine.http.attach("coderund-no-such-container")
        assert failed.value.status == 404
        await sandbox.engine.remove_all(["coderund-no-such-container"])  # cleanup never raises
    finally:
        await sandbox.engine.close()


async def test_the_queue_cap_is_hard_within_one_api_process(settings):
    async with own_server(settings, role="api", queue=f"{settings.queue}.cap", max_queue=40) as api:
        first, second, third = await api.user(), await api.user(), await api.user()
        for i in range(30):  # nobody consumes: they stay queued
            await api.submit(first, language="python", code=f"print({i})")
        answers = await asyncio.gather(*(api.call("POST", "/task", token=(second, third)[i % 2],
                                                  json={"language": "python", "code": "1"}) for i in range(20)))
        statuses = [status for status, _, _ in answers]
        assert statuses.count(201) == 10 and statuses.count(503) == 10, statuses
        await asyncio.sleep(1.2)  # a fresh reading of the broker agrees
        status, body, _ = await api.call("POST", "/task", token=first, json={"language": "python", "code": "1"})
        assert status == 503 and body["error"] == "queue_full"


async def test_two_workers_on_one_host_with_the_default_metrics_port(settings, tmp_path):
    s = dataclasses.replace(settings, queue=f"{settings.queue}.twoworkers", metrics_port=0, log_level="INFO")
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "coderund", "--role", "worker"], env=env_of(s),
                                stderr=log.open("wb")) for log in logs]
    try:
        ports = []
        for log in logs:
            for _ in range(100):
                found = re.search(rb"listening on http://[^:]+:(\d+)/metrics", log.read_bytes())
                if found:
                    ports.append(int(found.group(1)))
                    break
                await asyncio.sleep(0.2)
        assert len(ports) == 2 and ports[0] != ports[1], [log.read_text()[-2000:] for log in logs]
        await asyncio.sleep(1)
        assert [w.poll() for w in workers] == [None, None]  # both still running
        async with __import__("aiohttp").ClientSession() as session:
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200 and "coderund_worker_concurrency" in await response.text()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)


async def slow_request(base: str, token: str, body_chunks: list[bytes], declared: int) -> tuple[float, bytes]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(f"POST /task HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode())
    await writer.drain()

    async def trickle() -> None:
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(1)

    sending = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(4096), 30)
    finally:
        sending.cancel()
        writer.close()
    return time.monotonic() - started, answer


async def test_slow_clients_cannot_hold_a_connection_past_the_body_timeout(api):
    token = await api.user("slow")
    body = b'{"language": "python", "code": "print(1)"}'
    one_byte_a_second, never = await asyncio.gather(
        slow_request(api.base, token, [bytes([b]) for b in body], len(body)),
        slow_request(api.base, token, [], len(body)),
    )
    for elapsed, answer in (one_byte_a_second, never):
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error": "request_timeout"' in answer and 9 < elapsed < 15


async def test_per_user_submission_rate(settings):
    async with own_server(settings, role="all", queue=f"{settings.queue}.rate", user_rate=5) as api:
        token, other = await api.user(), await api.user()
        answers = [await api.call("POST", "/task", token=token, json={"language": "python", "code": "1"}) for _ in range(6)]
        assert [status for status, _, _ in answers] == [201] * 5 + [429]
        status, body, headers = answers[-1]
        assert body["error"] == "rate_limited" and 1 <= int(headers["Retry-After"]) <= 12
        assert (await api.call("POST", "/task", token=other, json={"language": "python", "code": "1"}))[0] == 201
        # A rejected body takes no token.
        assert (await api.call("POST", "/task", token=other, json={"language": "brainfuck", "code": "1"}))[0] == 400
        await asyncio.sleep(int(headers["Retry-After"]))
        assert (await api.call("POST", "/task", token=token, json={"language": "python", "code": "1"}))[0] == 201
