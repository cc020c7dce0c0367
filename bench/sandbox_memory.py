"""What a stateful sandbox's large answers cost the API process and Redis: memory, measured.

Not a test: it prints numbers. It starts its own `coderund --role api` and `--role worker` (separate
processes, so the API's memory is its own) against the local services, on a database of its own,
and tries two floods a user can make:

- results: one run that displays a 10 MiB string (--display-mb) N times (a run's results are capped);
- downloads: two GETs of a sparse file that never read their answers (a download goes one chunk at
  a time, as fast as its reader takes it).

For each it prints the API process's RSS and Redis's used_memory (the whole server's: run it on a
quiet Redis) before, at their highest during, and after. Its Redis database (--redis-url, db 14 by
default) is its own: it is emptied at the start.

    .venv/bin/python bench/sandbox_memory.py [--displays 30] [--display-mb 10] [--file-mb 400] [--hold 40] [--runtime runc]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import aiohttp
import psycopg
import redis

from coderund.repository.db import migrate

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Probe:
    """The API's RSS and Redis's used_memory, sampled while something runs."""

    def __init__(self, api_pid: int, redis_url: str) -> None:
        self.api_pid = api_pid
        self.redis = redis.Redis.from_url(redis_url)

    def now(self) -> tuple[float, float]:
        return rss_mb(self.api_pid), self.redis.info("memory")["used_memory"] / MB

    async def during(self, work: Awaitable[object], settle_s: float = 2) -> None:
        before = self.now()
        highest = list(before)
        task = asyncio.ensure_future(work)
        while not task.done():
            for i, value in enumerate(self.now()):
                highest[i] = max(highest[i], value)
            await asyncio.sleep(0.1)
        task.result()
        await asyncio.sleep(settle_s)
        after = self.now()
        for name, i in (("API RSS", 0), ("Redis used_memory", 1)):
            print(f"  {name:18} before {before[i]:7.1f} MiB   highest {highest[i]:7.1f} MiB   after {after[i]:7.1f} MiB")


async def results_flood(session: aiohttp.ClientSession, base: str, auth: dict[str, str], box: str, displays: int,
                        mb: int) -> None:
    code = f"s = 'x' * ({mb} << 20)\nfor i in range({displays}):\n    display(s)"
    started = time.monotonic()
    async with session.post(f"{base}/sandboxes/{box}/run", json={"code": code, "timeout_s": 300}, headers=auth) as r:
        body = await r.read()
    print(f"  answer: {r.status}, {len(body) / MB:.1f} MiB of JSON in {time.monotonic() - started:.1f} s")


async def unread_downloads(base: str, auth: dict[str, str], box: str, hold_s: float) -> None:
    """Two raw-socket GETs that never read a byte of their answers, held open for hold_s."""
    port = int(base.rsplit(":", 1)[1])
    writers = []
    for _ in range(2):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /sandboxes/{box}/files/big HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n\r\n"
                     .encode())
        await writer.drain()
        writers.append(writer)
    await asyncio.sleep(hold_s)
    for writer in writers:
        writer.close()


@contextlib.asynccontextmanager
async def coderund(runtime: str, redis_url: str) -> AsyncIterator[Stack]:
    """Its own `coderund --role api` and `--role worker`, on a database of its own, and a user of them."""
    name = f"coderund_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    redis.Redis.from_url(redis_url).flushdb()
    await migrate(database_url)
    port = free_port()
    env = os.environ | {"CODERUND_DATABASE_URL": database_url, "CODERUND_PORT": str(port), "CODERUND_HOST": "127.0.0.1",
                        "CODERUND_QUEUE": f"coderund.bench.{uuid.uuid4().hex[:6]}", "CODERUND_LOG_LEVEL": "WARNING",
                        "CODERUND_RUNTIME": runtime, "CODERUND_REDIS_URL": redis_url,
                        "CODERUND_WARM_SANDBOXES": "0"}
    api = subprocess.Popen([sys.executable, "-m", "coderund", "--role", "api"], env=env)
    worker = subprocess.Popen([sys.executable, "-m", "coderund", "--role", "worker"],
                              env=env | {"CODERUND_METRICS_PORT": str(free_port())})
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            for _ in range(600):
                try:
                    async with session.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            user = {"username": f"bench{uuid.uuid4().hex[:8]}", "password": "bench-password-1"}
            async with session.post(f"{base}/register", json=user) as r:
                assert r.status in (200, 201), await r.text()
            async with session.post(f"{base}/login", json=user) as r:
                auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
            yield Stack(session, base, auth, api.pid)
    finally:
        for process in (api, worker):
            process.terminate()
            process.wait(60)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    session: aiohttp.ClientSession
    base: str
    auth: dict[str, str]
    api_pid: int


async def main(args: argparse.Namespace) -> None:
    async with coderund(args.runtime, args.redis_url) as stack:
        session, base, auth = stack.session, stack.base, stack.auth
        async with session.post(f"{base}/sandboxes", json={"memory_mb": 2048, "disk_mb": args.file_mb + 64}, headers=auth) as r:
            assert r.status == 201, await r.text()
            box = (await r.json())["id"]
        probe = Probe(stack.api_pid, args.redis_url)
        print(f"results: {args.displays} × display('x' * ({args.display_mb} << 20)) in one run ({args.runtime})")
        await probe.during(results_flood(session, base, auth, box, args.displays, args.display_mb))
        async with session.post(f"{base}/sandboxes/{box}/commands", json={"cmd": f"truncate -s {args.file_mb}M big"},
                                headers=auth) as r:
            assert r.status == 200 and (await r.json())["exit_code"] == 0, await r.text()
        print(f"downloads: two unread GETs of a {args.file_mb} MiB sparse file, held {args.hold:g} s")
        await probe.during(unread_downloads(base, auth, box, args.hold))
        async with session.delete(f"{base}/sandboxes/{box}", headers=auth):
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--displays", type=int, default=30)
    parser.add_argument("--display-mb", type=int, default=10)
    parser.add_argument("--file-mb", type=int, default=400)
    parser.add_argument("--hold", type=float, default=40)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    asyncio.run(main(parser.parse_args()))
