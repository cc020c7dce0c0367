"""End-to-end latency of a Python hello world through coderund, against `docker run --rm` of the same image.

Not a test: it prints numbers. It starts its own `coderund --role all` on a free port, against the
local services (run `make test-env` first), and in the same run times the baseline.

    .venv/bin/python bench/latency.py [--runs 30] [--concurrency 1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

import aiohttp

IMAGE = "coderund/python:bookworm"
CODE = 'print("hello")'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def baseline(runs: int) -> list[float]:
    """docker run --rm with the isolation coderund applies, minus coderund."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            ["docker", "run", "--rm", "--network=none", "--read-only", "--cap-drop=ALL", "--user=65534:65534",
             "--memory=256m", "--memory-swap=256m", IMAGE, "python3", "-c", CODE],
            check=True, capture_output=True,
        )
        times.append((time.perf_counter() - started) * 1000)
    return times


async def through_api(base: str, runs: int, concurrency: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        await session.post(f"{base}/register", json={"username": name, "password": "benchmark"})
        async with session.post(f"{base}/login", json={"username": name, "password": "benchmark"}) as r:
            headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
        gate = asyncio.Semaphore(concurrency)

        async def one() -> float:
            async with gate:
                started = time.perf_counter()
                async with session.post(f"{base}/task", json={"language": "python", "code": CODE}, headers=headers) as r:
                    task_id = (await r.json())["task_id"]
                while True:
                    async with session.get(f"{base}/result/{task_id}", headers=headers) as r:
                        if r.status == 200:
                            body = await r.json()
                            assert body["stdout"] == "hello\n", body
                            return (time.perf_counter() - started) * 1000
                    await asyncio.sleep(0.01)

        return list(await asyncio.gather(*(one() for _ in range(runs))))


async def wait_up(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("coderund did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    port = free_port()
    env = os.environ | {"CODERUND_PORT": str(port), "CODERUND_QUEUE": f"coderund.bench.{uuid.uuid4().hex[:6]}",
                        "CODERUND_LOG_LEVEL": "WARNING", "CODERUND_HOST": "127.0.0.1"}
    server = subprocess.Popen([sys.executable, "-m", "coderund", "--role", "all"], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        asyncio.run(wait_up(base))
        asyncio.run(through_api(base, 3, 1))  # warm-up
        api = asyncio.run(through_api(base, args.runs, args.concurrency))
        docker = baseline(args.runs)
    finally:
        server.terminate()
        server.wait(60)
    print(f"{args.runs} runs of a Python hello world, concurrency {args.concurrency}")
    print(f"{'':24}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for label, values in (("coderund submit→result", api), ("docker run --rm", docker)):
        print(f"{label:24}{percentile(values, 50):10.0f}{percentile(values, 95):10.0f}{statistics.mean(values):10.0f}")
    print(f"ratio coderund/docker: p50 {percentile(api, 50) / percentile(docker, 50):.2f}, "
          f"p95 {percentile(api, 95) / percentile(docker, 95):.2f}")


if __name__ == "__main__":
    main()
