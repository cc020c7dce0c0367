"""E2B's SDK against coderund's own API, in one run: what the translation costs an agent.

Not a test: it prints numbers. It starts its own `coderund --role all` (runc by default) against the
local services (run `make test-env` first) and times, alternately so that both meet the same
machine, a sandbox's start as an agent sees it:

- E2B: `Sandbox.create()` then a first `commands.run("echo hi")`, through the unmodified `e2b` SDK
  configured by E2B_API_URL, E2B_SANDBOX_URL and an e2b_ key;
- coderund: `POST /sandboxes` then `POST /sandboxes/{id}/commands` with the command line the SDK
  sends (`/bin/bash -l -c "echo hi"`), over one keep-alive connection as the SDK has.

It prints each one's p50 and p95 create-to-first-command, and the ratio of the p50s (the target: at
most 1.2x). The sandboxes are killed after each sample, outside the timing.

    .venv/bin/python bench/e2b_sdk.py [--runs 20] [--runtime runc]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

import requests

from latency import free_port, p  # the benches' shared helpers, beside this file


def start(runtime: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"CODERUND_PORT": str(port), "CODERUND_QUEUE": f"coderund.bench.{uuid.uuid4().hex[:6]}",
                        "CODERUND_LOG_LEVEL": "WARNING", "CODERUND_HOST": "127.0.0.1", "CODERUND_RUNTIME": runtime,
                        "CODERUND_SANDBOX_MAX_PER_USER": "4"}
    process = subprocess.Popen([sys.executable, "-m", "coderund", "--role", "all"], env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                time.sleep(3)  # the warm sandboxes start
                return process, base
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise SystemExit("coderund did not become ready")


def credentials(base: str) -> tuple[dict[str, str], str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    requests.post(f"{base}/register", json={"username": name, "password": "benchmark"}, timeout=10).raise_for_status()
    token = requests.post(f"{base}/login", json={"username": name, "password": "benchmark"}, timeout=10).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    made = requests.post(f"{base}/account/api-keys", json={"name": "bench", "form": "e2b"}, headers=auth, timeout=10)
    made.raise_for_status()
    return auth, made.json()["key"]


def e2b_first_command() -> float:
    from e2b import Sandbox

    started = time.perf_counter()
    sandbox = Sandbox.create()
    result = sandbox.commands.run("echo hi")
    took = (time.perf_counter() - started) * 1000
    assert result.stdout == "hi\n", result
    sandbox.kill()
    return took


def native_first_command(session: requests.Session, base: str) -> float:
    started = time.perf_counter()
    made = session.post(f"{base}/sandboxes", json={"language": "javascript"}, timeout=60)
    assert made.status_code == 201, made.text
    sandbox = made.json()["id"]
    # The command line E2B's SDK sends for commands.run("echo hi"): the same work on both sides
    ran = session.post(f"{base}/sandboxes/{sandbox}/commands", json={"cmd": ["/bin/bash", "-l", "-c", "echo hi"]}, timeout=60)
    took = (time.perf_counter() - started) * 1000
    assert ran.json().get("stdout") == "hi\n", ran.text
    session.delete(f"{base}/sandboxes/{sandbox}", timeout=60)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between samples, so the warm sandbox refills")
    args = parser.parse_args()
    process, base = start(args.runtime)
    try:
        auth, key = credentials(base)
        os.environ.update(E2B_API_URL=f"{base}/e2b", E2B_SANDBOX_URL=f"{base}/e2b/sandbox", E2B_API_KEY=key)
        session = requests.Session()
        session.headers.update(auth)
        e2b_first_command(), native_first_command(session, base)  # the first of each pays for imports and connections
        times: dict[str, list[float]] = {"E2B SDK": [], "coderund API": []}
        for _ in range(args.runs):
            times["E2B SDK"].append(e2b_first_command())
            time.sleep(args.gap)
            times["coderund API"].append(native_first_command(session, base))
            time.sleep(args.gap)
    finally:
        process.terminate()
        process.wait(90)
    print(f"\ncreate → first command (echo hi), {args.runs} runs each, {args.runtime}, alternating")
    for name, values in times.items():
        print(f"  {name:13} p50 {statistics.median(values):7.1f} ms   p95 {p(values, 95):7.1f} ms")
    ratio = statistics.median(times["E2B SDK"]) / statistics.median(times["coderund API"])
    print(f"  E2B SDK / coderund API (p50): {ratio:.2f}x (target: at most 1.2x)")


if __name__ == "__main__":
    main()
