"""What a sandbox's pause, resume and fork take: p50 and p95, measured.

Not a test: it prints numbers. It starts its own `coderund --role api` and `--role worker` (as
bench/sandbox_memory.py does) and times, over --reps rounds each:

- an idle python sandbox: POST …/pause (its files persisted to PostgreSQL, its container released), then
  POST …/resume (a new container, its files restored);
- the same holding --files-mb of incompressible files (the default 200 MiB);
- POST …/fork of the idle one while it runs (it is persisted first; the fork starts from a copy).

    .venv/bin/python bench/sandbox_pause.py [--reps 5] [--files-mb 200] [--runtime runc]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sandbox_memory import Stack, coderund


async def timed(stack: Stack, path: str, expect: int = 200) -> tuple[float, dict]:
    started = time.monotonic()
    async with stack.session.post(f"{stack.base}{path}", headers=stack.auth) as r:
        body = await r.json()
        assert r.status == expect, body
    return time.monotonic() - started, body


def figures(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(f"  {name:34} p50 {statistics.median(ordered) * 1000:7.0f} ms   p95 {p95 * 1000:7.0f} ms   (n={len(ordered)})")


async def sandbox(stack: Stack, **body: int) -> str:
    async with stack.session.post(f"{stack.base}/sandboxes", json=body, headers=stack.auth) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def main(args: argparse.Namespace) -> None:
    async with coderund(args.runtime, args.redis_url) as stack:
        idle = await sandbox(stack)
        big = await sandbox(stack, disk_mb=args.files_mb + 56, memory_mb=args.files_mb + 768)
        async with stack.session.post(f"{stack.base}/sandboxes/{big}/commands", headers=stack.auth, json={
                "cmd": f"head -c {args.files_mb}M /dev/urandom > big.bin", "timeout_s": 120}) as r:
            assert r.status == 200 and (await r.json())["exit_code"] == 0, await r.text()
        print(f"{args.runtime}, {args.reps} rounds each")
        for name, box in (("idle python", idle), (f"{args.files_mb} MiB of files", big)):
            pauses, resumes = [], []
            for _ in range(args.reps):
                took, paused = await timed(stack, f"/sandboxes/{box}/pause")
                pauses.append(took)
                took, resumed = await timed(stack, f"/sandboxes/{box}/resume")
                assert resumed["restored"] == "files", resumed
                resumes.append(took)
            figures(f"pause, {name} ({paused['persisted_bytes'] / 2**20:.1f} MiB)", pauses)
            figures(f"resume, {name}", resumes)
        async with stack.session.delete(f"{stack.base}/sandboxes/{big}", headers=stack.auth):
            pass
        forks = []
        for _ in range(args.reps):
            took, fork = await timed(stack, f"/sandboxes/{idle}/fork", 201)
            forks.append(took)
            async with stack.session.delete(f"{stack.base}/sandboxes/{fork['id']}", headers=stack.auth):
                pass
        figures("fork, idle python (running)", forks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--files-mb", type=int, default=200)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    asyncio.run(main(parser.parse_args()))
