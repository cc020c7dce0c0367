"""Egress, measured: a 10 MB download through a task's network policy against the same download by a
host process, and the latency a first request gains on the way out.

Not a test: it prints numbers. It starts an upstream HTTP server on 127.0.0.1 and its own
`coderund --role all` per runtime (runc, then runsc) with egress on, names resolved only by its static
table (bench.test → 127.0.0.1, the one non-global address allowed): nothing leaves loopback. The same
program runs in a task (through the proxy) and as a host process (straight to the upstream); each
times its own first request and its download, so interpreter and sandbox starts are not counted.

    .venv/bin/python bench/egress.py [--runs 5] [--mb 10]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys

import aiohttp
from aiohttp import web

from latency import Client, Server, free_port  # bench/, the script's own folder

PROGRAM = r'''
import json, sys, time, urllib.request
url = sys.argv[1]
started = time.perf_counter()
urllib.request.urlopen(url + "/hello").read()
first = time.perf_counter() - started
started, got = time.perf_counter(), 0
with urllib.request.urlopen(f"{url}/big") as response:
    while chunk := response.read(1 << 16):
        got += len(chunk)
took = time.perf_counter() - started
print(json.dumps({"first_ms": first * 1000, "mb_s": got / took / 1e6, "bytes": got}))
'''


async def upstream(port: int, mb: int) -> web.AppRunner:
    """/hello, and /big: mb megabytes, made once."""
    big = b"x" * (mb * 1_000_000)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=big if request.path == "/big" else b"hello")

    app = web.Application()
    app.router.add_get("/{name}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def on_host(port: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run([sys.executable, "-c", PROGRAM, f"http://127.0.0.1:{port}"], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


async def in_task(client: Client, auth: dict[str, str], upstream_port: int) -> dict[str, float]:
    body = {"language": "python", "code": PROGRAM, "args": [f"http://bench.test:{upstream_port}"],
            "limits": {"time_ms": 20000}, "network": {"allow": ["bench.test"]}}
    async with client.session.post(f"{client.base}/task?wait=30", json=body, headers=auth) as response:
        result = await response.json()
    assert result.get("verdict") == "ok", result
    return json.loads(result["stdout"])


async def measure(runtime: str, port: int, args: argparse.Namespace) -> None:
    server = Server(runtime, CODERUND_EGRESS="on", CODERUND_EGRESS_RESOLVE="static",
                    CODERUND_EGRESS_HOSTS="bench.test=127.0.0.1", CODERUND_EGRESS_ALLOW_PRIVATE="127.0.0.1/32",
                    CODERUND_EGRESS_PORTS=str(port))
    try:
        await server.ready()
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.base)
            auth = await client.user()
            await in_task(client, auth, port)  # the image and the engine warmed
            through, direct = [], []
            for _ in range(args.runs):
                through.append(await in_task(client, auth, port))
                direct.append(await asyncio.to_thread(on_host, port))
    finally:
        server.stop()
    mb_s = statistics.median(r["mb_s"] for r in through), statistics.median(r["mb_s"] for r in direct)
    first = statistics.median(r["first_ms"] for r in through), statistics.median(r["first_ms"] for r in direct)
    print(f"{runtime}: {args.mb} MB through egress {mb_s[0]:.0f} MB/s, by a host process {mb_s[1]:.0f} MB/s,"
          f" ratio {mb_s[0] / mb_s[1]:.2f}; first request {first[0]:.1f} ms against {first[1]:.1f} ms"
          f" (+{first[0] - first[1]:.1f} ms); medians of {args.runs}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--runtimes", default="runc,runsc")
    args = parser.parse_args()
    port = free_port()
    runner = await upstream(port, args.mb)
    try:
        for runtime in args.runtimes.split(","):
            await measure(runtime, port, args)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
