"""The fast path, measured: coderund against its baselines, all in one run, printed as ratios.

Not a test: it prints numbers. It starts its own `coderund --role all` per runtime (runc, then runsc)
on free ports, against the local services (run `make test-env` first), and in the same run times
the baselines: `docker run --rm` of the same image with the same isolation flags, a bare process,
and the engine's churn ceiling (create, start, wait, remove with 8 threads: python hello under the
sandbox's flags, and bare containers running `true`), and the floor of a 64-case python task: its
interpreter starts timed inside such a container, shared by two lanes.

Latency runs are spaced (--gap) so that each meets the system at rest, as a single user would; the
burst measures what happens when it is not.

    .venv/bin/python bench/latency.py [--runs 30] [--burst 300] [--gap 0.3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import docker

PYTHON_IMAGE = "coderund/python:bookworm"
BARE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"  # Debian's, as in the image
HELLO = {
    "python": 'print("hello")',
    "c": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }\n',
}
COMMENT = {"python": "# {}\n", "c": "// {}\n", "go": "// {}\n"}
SQUARE = {  # a judge's usual program: read n, print n * n
    "python": "n = int(input())\nprint(n * n)",
    "c": '#include <stdio.h>\nint main(void) { long n; scanf("%ld", &n); printf("%ld\\n", n * n); return 0; }\n',
}
FLAGS = ["--network=none", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--user=65534:65534",
         "--memory=256m", "--memory-swap=256m", "--pids-limit=128", "--cpus=1", "--tmpfs=/box:size=64m,exec,mode=1777"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(command: list[str], runs: int, gap: float) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(gap)
    return times


def interpreter_floor(cases: int, lanes: int = 2, runs: int = 3) -> list[float]:
    """The least a python task of `cases` test cases can take on `lanes` cores: its cases' fresh
    interpreter starts (the square program, timed inside a container with the sandbox's flags), shared
    among the lanes, with no platform at all; ms, once per run."""
    loop = (f'echo 7 > /box/in; n=0; s=$(date +%s%N); while [ $n -lt {cases} ]; do python3 -B /box/main.py < /box/in'
            ' >/dev/null; n=$((n+1)); done; echo $(( ($(date +%s%N) - s) / 1000 ))')
    command = ["docker", "run", "--rm", *FLAGS, "-e", f"CODE={SQUARE['python']}", PYTHON_IMAGE,
               "sh", "-c", f'printf "%s" "$CODE" > /box/main.py && {loop}']
    return [int(subprocess.run(command, capture_output=True, text=True, check=True).stdout) / 1000 / lanes
            for _ in range(runs)]


def churn_ceiling(sandboxed: bool, count: int = 60, threads: int = 8) -> float:
    """Containers per second the engine creates, starts, waits for and removes, with nothing of ours:
    bare ones running `true`, or (sandboxed) python hello under the isolation flags of `docker run`'s
    baseline, the engine's own cost of the work a burst asks of it."""
    api = docker.from_env().api
    command = ["python3", "-c", HELLO["python"]] if sandboxed else ["true"]
    config = dict(network_mode="none")
    if sandboxed:
        config.update(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit="256m",
                      memswap_limit="256m", pids_limit=128, nano_cpus=10**9, tmpfs={"/box": "size=64m,exec,mode=1777"})

    def one(_: int) -> None:
        container = api.create_container(PYTHON_IMAGE, command, network_disabled=True,  # as coderund's are
                                         user="65534:65534" if sandboxed else "", host_config=api.create_host_config(**config))
        api.start(container["Id"])
        api.wait(container["Id"])
        api.remove_container(container["Id"], force=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def user(self) -> dict[str, str]:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        await self.session.post(f"{self.base}/register", json={"username": name, "password": "benchmark"})
        async with self.session.post(f"{self.base}/login", json={"username": name, "password": "benchmark"}) as r:
            return {"Authorization": f"Bearer {(await r.json())['token']}"}

    async def waited(self, auth: dict[str, str], language: str, code: str) -> float:
        """Submit → result in one call: POST /task?wait=30."""
        started = time.perf_counter()
        async with self.session.post(f"{self.base}/task?wait=30", json={"language": language, "code": code}, headers=auth) as r:
            body = await r.json()
        assert body.get("stdout") == "hello\n", body
        return (time.perf_counter() - started) * 1000

    async def stages(self, auth: dict[str, str]) -> dict[str, float]:
        """Where one python hello's time goes, from the client's clock and the task's own timestamps
        (one machine, one clock): ms per stage."""
        sent = time.time()
        async with self.session.post(f"{self.base}/task?wait=30", json={"language": "python", "code": HELLO["python"]},
                                     headers=auth) as r:
            body = await r.json()
        answered = time.time()
        at = {name: datetime.fromisoformat(body[name]).timestamp() for name in ("created_at", "started_at", "finished_at")}
        return {
            "HTTP, auth, validation, the insert": (at["created_at"] - sent) * 1000,
            "publish, delivery, claim": (at["started_at"] - at["created_at"]) * 1000,
            "sandbox hand-off, report, finishing transaction": (at["finished_at"] - at["started_at"]) * 1000 - body["wall_ms"],
            "the program (its wall time)": body["wall_ms"],
            "notification, the answer": (answered - at["finished_at"]) * 1000,
            "end to end": (answered - sent) * 1000,
        }

    async def key(self, auth: dict[str, str]) -> dict[str, str]:
        async with self.session.post(f"{self.base}/account/api-keys", json={"name": "bench"}, headers=auth) as r:
            return {"Authorization": f"Bearer {(await r.json())['key']}"}

    async def judge0(self, auth: dict[str, str]) -> float:
        """The same hello through the Judge0 API: POST /judge0/submissions?wait=true."""
        started = time.perf_counter()
        async with self.session.post(f"{self.base}/judge0/submissions?wait=true", headers=auth,
                                     json={"source_code": HELLO["python"], "language_id": 71}) as r:
            body = await r.json()
        assert body.get("stdout") == "hello\n", body
        return (time.perf_counter() - started) * 1000

    async def judged(self, auth: dict[str, str], language: str, cases: int) -> float:
        """The square program with `cases` test cases (none: one plain run of it), submit → result."""
        body: dict = {"language": language, "code": SQUARE[language], "stdin": "7\n"}
        if cases:
            body["tests"] = [{"stdin": f"{n}\n", "expected": str(n * n)} for n in range(cases)]
        started = time.perf_counter()
        async with self.session.post(f"{self.base}/task?wait=30", json=body, headers=auth) as r:
            answer = await r.json()
        assert answer.get("passed", cases) == cases and answer.get("verdict") == "ok", answer
        return (time.perf_counter() - started) * 1000

    async def polled(self, auth: dict[str, str], language: str, code: str, every: float = 0.002) -> float:
        """Submit, then poll /status every 2 ms, then fetch /result: the seed contract."""
        started = time.perf_counter()
        async with self.session.post(f"{self.base}/task", json={"language": language, "code": code}, headers=auth) as r:
            task_id = (await r.json())["task_id"]
        while True:
            async with self.session.get(f"{self.base}/status/{task_id}", headers=auth) as r:
                if (await r.json())["status"] == "ready":
                    break
            await asyncio.sleep(every)
        async with self.session.get(f"{self.base}/result/{task_id}", headers=auth) as r:
            assert (await r.json())["stdout"] == "hello\n"
        return (time.perf_counter() - started) * 1000

    async def live(self, auth: dict[str, str], until: str) -> float:
        """Python hello over GET /ws: until its first stdout chunk, or until its result."""
        async with self.session.ws_connect(f"{self.base.replace('http', 'ws', 1)}/ws", headers=auth) as ws:
            started = time.perf_counter()
            await ws.send_json({"type": "run", "task": {"language": "python", "code": HELLO["python"]}})
            while (message := await ws.receive_json(timeout=60))["type"] not in (until, "error"):
                if message["type"] == "accepted":
                    await ws.send_json({"type": "eof"})
            elapsed = (time.perf_counter() - started) * 1000
        assert message["type"] == until, message
        return elapsed

    async def sandbox(self, auth: dict[str, str], **body: object) -> tuple[str, float]:
        """A new stateful sandbox: its id, and how long the create took (ms)."""
        started = time.perf_counter()
        async with self.session.post(f"{self.base}/sandboxes", json=body, headers=auth) as r:
            created = await r.json()
        assert r.status == 201, created
        return created["id"], (time.perf_counter() - started) * 1000

    async def sandbox_run(self, auth: dict[str, str], sandbox: str, code: str = "1 + 1", expected: str = "2") -> float:
        started = time.perf_counter()
        async with self.session.post(f"{self.base}/sandboxes/{sandbox}/run", json={"code": code}, headers=auth) as r:
            body = await r.json()
        assert body.get("results") == [{"text/plain": expected}], body
        return (time.perf_counter() - started) * 1000

    async def sandbox_end(self, auth: dict[str, str], sandbox: str) -> None:
        async with self.session.delete(f"{self.base}/sandboxes/{sandbox}", headers=auth) as r:
            assert r.status == 204, await r.text()

    async def sandboxes(self, auth: dict[str, str], runs: int, gap: float) -> dict[str, list[float]]:
        """Create, the first `1 + 1` in it, the same repeated in a sandbox in use, and the first run
        after an idle pause (which restores it from its persisted files, on a new container)."""
        out: dict[str, list[float]] = {"sandbox create": [], "sandbox first run": [], "sandbox resume": []}
        for _ in range(runs):
            sandbox, took = await self.sandbox(auth)
            out["sandbox create"].append(took)
            out["sandbox first run"].append(await self.sandbox_run(auth, sandbox))
            await self.sandbox_end(auth, sandbox)
            await asyncio.sleep(gap)
        sandbox, _ = await self.sandbox(auth)
        await self.sandbox_run(auth, sandbox)
        out["sandbox repeated run"] = await self.series(runs * 3, gap, lambda i: self.sandbox_run(auth, sandbox))
        await self.sandbox_end(auth, sandbox)
        sandbox, _ = await self.sandbox(auth, idle_timeout_s=1)
        await self.sandbox_run(auth, sandbox, "open('kept', 'w').write('41')", "2")
        for _ in range(max(3, runs // 2)):
            while True:  # until the worker has paused it
                async with self.session.get(f"{self.base}/sandboxes/{sandbox}", headers=auth) as r:
                    if (await r.json())["state"] == "paused":
                        break
                await asyncio.sleep(0.2)
            out["sandbox resume"].append(await self.sandbox_run(auth, sandbox, "int(open('kept').read()) + 1", "42"))
        await self.sandbox_end(auth, sandbox)
        return out

    async def series(self, runs: int, gap: float, one) -> list[float]:
        await asyncio.sleep(gap)
        times = []
        for i in range(runs):
            times.append(await one(i))
            await asyncio.sleep(gap)
        return times

    async def burst(self, count: int) -> float:
        """Tasks per second for `count` python hellos submitted at once (users of 50 tasks each)."""
        users = [await self.user() for _ in range((count + 49) // 50)]
        started = time.perf_counter()

        async def one(i: int) -> None:
            auth = users[i % len(users)]
            async with self.session.post(f"{self.base}/task", json={"language": "python", "code": HELLO["python"]},
                                         headers=auth) as r:
                task_id = (await r.json())["task_id"]
            while True:
                async with self.session.get(f"{self.base}/result/{task_id}?wait=30", headers=auth) as r:
                    if r.status == 200:
                        assert (await r.json())["verdict"] == "ok"
                        return

        await asyncio.gather(*(one(i) for i in range(count)))
        return count / (time.perf_counter() - started)


async def engine_calls(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The server's count of Docker engine calls, by route, from its /metrics."""
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'coderund_docker_api_calls_total\{call="([^"]+)"\} (\S+)', text)}


def idle_cost(runtime: str, count: int = 8) -> float:
    """MiB of host memory (PSS of every process they add: shim, runtime, supervisor) per idle warm container."""
    from coderund.sandbox import supervisor
    from coderund.sandbox.engine import Engine, Shape
    from coderund.sandbox.options import Isolation

    def pss_by_pid() -> dict[int, int]:
        found = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    text = open(f"/proc/{entry.name}/smaps_rollup").read()
                    found[int(entry.name)] = int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
                except (OSError, AttributeError):
                    pass
        return found

    async def run() -> float:
        engine = Engine(docker.from_env(), isolation=Isolation(runtime=runtime), threads=4, worker_id="bench", deployment="bench",
                        supervisor_binary=supervisor.build(Path.home() / ".cache" / "coderund"))
        before = pss_by_pid()
        boxes = [await engine.make(Shape(PYTHON_IMAGE, 256), {}) for _ in range(count)]
        await asyncio.sleep(2)
        added = sum(kb for pid, kb in pss_by_pid().items() if pid not in before)
        for box in boxes:
            engine.discard(box)
        await engine.close()
        return added / count / 1024

    return asyncio.run(run())


def wrk(url: str, headers: dict[str, str]) -> float:
    args = ["wrk", "-t2", "-c32", "-d5s", *(a for k, v in headers.items() for a in ("-H", f"{k}: {v}")), url]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


class Server:
    def __init__(self, runtime: str, **settings: str) -> None:
        """A coderund of the bench's own; settings are more CODERUND_* variables (bench/egress.py's)."""
        self.port = free_port()
        env = os.environ | {"CODERUND_PORT": str(self.port), "CODERUND_QUEUE": f"coderund.bench.{uuid.uuid4().hex[:6]}",
                            "CODERUND_LOG_LEVEL": "WARNING", "CODERUND_HOST": "127.0.0.1", "CODERUND_RUNTIME": runtime,
                            "CODERUND_USER_MAX_PENDING": "1000", **settings}
        self.process = subprocess.Popen([sys.executable, "-m", "coderund", "--role", "all"], env=env)
        self.base = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                try:
                    async with session.get(f"{self.base}/readyz") as r:
                        if r.status == 200:
                            await asyncio.sleep(3)  # the warm pool fills
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise SystemExit("coderund did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(90)


def progress(what: str) -> None:
    print(f"[bench] {what}", file=sys.stderr, flush=True)


async def measure(runtime: str, args: argparse.Namespace) -> dict[str, list[float] | float]:
    progress(f"coderund under {runtime}")
    server = Server(runtime)
    try:
        await server.ready()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            client = Client(session, server.base)
            auth = await client.user()
            out: dict[str, list[float] | float] = {}
            await client.series(3, args.gap, lambda i: client.waited(auth, "python", HELLO["python"]))  # warm-up
            calls = await engine_calls(session, server.base)
            out["python wait"] = await client.series(args.runs, args.gap, lambda i: client.waited(auth, "python", HELLO["python"]))
            after = await engine_calls(session, server.base)
            out["engine calls"] = {k: (v - calls.get(k, 0)) / args.runs for k, v in after.items() if v != calls.get(k, 0)}
            progress(f"stateful sandboxes under {runtime}")
            out.update(await client.sandboxes(auth, args.sandbox_runs, args.gap))
            stages = await client.series(args.runs, args.gap, lambda i: client.stages(auth))
            out["stages"] = {name: statistics.median(run[name] for run in stages) for name in stages[0]}
            out["python judge0"] = await client.series(args.runs, args.gap, lambda i: client.judge0(auth))
            out["python poll"] = await client.series(args.runs, args.gap, lambda i: client.polled(auth, "python", HELLO["python"]))
            for until in ("stdout", "result"):
                out[f"python live {until}"] = await client.series(args.runs, args.gap, lambda i, u=until: client.live(auth, u))
            for language in ("c", "go"):
                progress(f"{language} under {runtime}")
                fresh = lambda i, language=language: client.waited(  # noqa: E731 - a new source each time: a miss
                    auth, language, COMMENT[language].format(uuid.uuid4().hex) + HELLO[language])
                out[f"{language} first"] = await client.series(args.compiled_runs, args.gap, fresh)
                await client.waited(auth, language, HELLO[language])
                out[f"{language} repeated"] = await client.series(args.runs, args.gap,
                                                                  lambda i, language=language: client.waited(auth, language, HELLO[language]))
            for language in ("python", "c"):
                progress(f"{language} test cases under {runtime}")
                await client.judged(auth, language, 0)  # the build, cached
                for cases in (0, 20, 64):
                    out[f"{language} {cases} cases"] = await client.series(
                        args.case_runs, args.gap, lambda i, language=language, cases=cases: client.judged(auth, language, cases))
            if runtime == "runc":
                progress("the engine's churn ceiling, then a burst")
                out["churn ceiling"] = await asyncio.to_thread(churn_ceiling, True)
                out["bare churn ceiling"] = await asyncio.to_thread(churn_ceiling, False)
                out["burst"] = await client.burst(args.burst)
                progress("GET /status against /healthz")
                async with session.post(f"{server.base}/task?wait=30", json={"language": "python", "code": "1"}, headers=auth) as r:
                    task_id = (await r.json())["task_id"]
                out["status rps"] = await asyncio.to_thread(wrk, f"{server.base}/status/{task_id}", auth)
                out["status rps, key"] = await asyncio.to_thread(wrk, f"{server.base}/status/{task_id}", await client.key(auth))
                out["healthz rps"] = await asyncio.to_thread(wrk, f"{server.base}/healthz", {})
            return out
    finally:
        server.stop()


def row(label: str, values: list[float], base: list[float] | None = None, target: str = "") -> str:
    ratio = f"{p(values, 50) / p(base, 50):6.2f}x" if base else "       "
    return f"{label:34}{p(values, 50):9.0f}{p(values, 95):9.0f}   {ratio}  {target}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--compiled-runs", type=int, default=5, help="first submissions (cache misses) per compiled language")
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--case-runs", type=int, default=7, help="runs of each test-case task")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between latency runs")
    parser.add_argument("--sandbox-runs", type=int, default=10, help="stateful sandboxes created (their repeated runs: 3x)")
    args = parser.parse_args()
    results = {runtime: asyncio.run(measure(runtime, args)) for runtime in ("runc", "runsc")}
    progress("docker run --rm, and a bare process")
    docker_run = {rt: timed(["docker", "run", "--rm", f"--runtime={rt}", *FLAGS, PYTHON_IMAGE, "python3", "-c", HELLO["python"]],
                            args.runs, args.gap) for rt in ("runc", "runsc")}
    bare = timed([BARE_PYTHON, "-c", HELLO["python"]], args.runs, 0)
    floor = interpreter_floor(64)
    progress("the memory of idle warm containers")
    idle = {rt: idle_cost(rt) for rt in ("runc", "runsc")}

    print(f"\n{'':34}{'p50 ms':>9}{'p95 ms':>9}   {'ratio':>7}  (p50 against the row it names; target)")
    print(row(f"bare {BARE_PYTHON} -c", bare))
    for rt in ("runc", "runsc"):
        r = results[rt]
        print(f"-- {rt}: an idle warm container holds {idle[rt]:.1f} MiB of host memory; engine calls per python task, "
              "none before its report: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["engine calls"].items())))
        print(row("docker run --rm (same flags)", docker_run[rt]))
        print(row("python hello, wait=30 / docker run", r["python wait"], docker_run[rt], "≤ 0.15x"))
        total = r["stages"]["end to end"]
        print("   where python hello's time goes (medians, ms): " + ", ".join(
            f"{name} {ms:.1f}" for name, ms in r["stages"].items()) +
              f"; the platform's share {total - r['stages']['the program (its wall time)']:.1f} of {total:.1f}")
        for name, target in (("create", "≤ 150 ms (runc)"), ("first run", ""), ("repeated run", "≤ 20 ms (runc)"),
                             ("resume", "")):
            label = f"sandbox {name}" + (" (1 + 1)" if "run" in name else " (then 1 + 1)" if name == "resume" else "")
            print(row(f"{label} / python hello", r[f"sandbox {name}"], r["python wait"], target))
        print(row("python hello, Judge0 API / wait=30", r["python judge0"], r["python wait"], "≤ 1.1x"))
        print(row("python hello, polling / docker run", r["python poll"], docker_run[rt]))
        print(row("python over /ws, first output / wait", r["python live stdout"], r["python wait"]))
        print(row("python over /ws, result / wait", r["python live result"], r["python wait"]))
        print(row("python hello, wait=30 / bare", r["python wait"], bare, "≤ 3x" if rt == "runc" else ""))
        for language, target in (("python", "≤ 12x"), ("c", "≤ 4x")):
            for cases in (20, 64):
                print(row(f"{language}, {cases} cases / one plain run", r[f"{language} {cases} cases"], r[f"{language} 0 cases"],
                          target if cases == 64 else ""))
        if rt == "runc":
            print(row("python, 64 cases' floor / one plain run", floor, r["python 0 cases"], "(64 bare starts, 2 lanes)"))
        for language in ("c", "go"):
            print(row(f"{language} hello, first / python", r[f"{language} first"], r["python wait"]))
            print(row(f"{language} hello, repeated / python", r[f"{language} repeated"], r["python wait"], "≤ 1.5x"))
    r = results["runc"]
    print(f"-- throughput (runc)\nchurn ceiling {r['churn ceiling']:.1f} python hellos/s in sandboxed containers "
          f"({r['bare churn ceiling']:.1f}/s bare `true` ones); burst of {args.burst}: {r['burst']:.1f} tasks/s = "
          f"{r['burst'] / r['churn ceiling']:.2f}x the ceiling (target ≥ 0.9x), {r['burst'] / r['bare churn ceiling']:.2f}x the bare one")
    print(f"authenticated GET /status {r['status rps']:.0f} req/s, /healthz {r['healthz rps']:.0f} req/s = "
          f"{r['status rps'] / r['healthz rps']:.2f}x (target ≥ 0.3x)")
    print(f"authenticated GET /status with an API key {r['status rps, key']:.0f} req/s = "
          f"{r['status rps, key'] / r['status rps']:.2f}x with a session token (target ≥ 0.9x)")
    print(f"(mean of python wait under runc: {statistics.mean(r['python wait']):.0f} ms)")


if __name__ == "__main__":
    main()
