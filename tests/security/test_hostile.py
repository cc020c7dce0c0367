"""Hostile programs, each with the verdict it must get and what must stay true, under runc and gVisor.

Every case runs through the real API, queue, worker and Docker. After each one no container of the
task is left; at the end of each runtime the next task still runs normally and nothing a task
started survives on the host.
"""
from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import psycopg
import pytest

from tests.conftest import RUNTIMES, container_of

MARKER = "987654"  # a sleep of this many seconds marks processes that try to outlive their task


@dataclass
class Case:
    name: str
    language: str
    code: str
    verdicts: tuple[str, ...]
    check: Callable[[dict[str, Any]], bool] = lambda result: True
    limits: dict[str, int] = field(default_factory=dict)
    check_on: tuple[str, ...] = tuple(RUNTIMES)  # runtimes where `check` holds; the verdict holds on all


def out(*needles: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: all(n in r["stdout"] for n in needles)


def absent(*needles: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: not any(n in r["stdout"] + r["stderr"] for n in needles)


PY_TRY = """
import os, sys
def attempt(label, fn):
    try:
        fn()
        print(label, "ALLOWED")
    except Exception as e:
        print(label, "refused", type(e).__name__)
"""

LIBC = "import ctypes, ctypes.util, os\nlibc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)\n"

CASES = [
    # Under gVisor its kernel stops it at 128 processes (RLIMIT_NPROC), whose interpreters' pages
    # it counts to the memory limit first: contained either way.
    Case("fork bomb (python)", "python", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
         ("time_limit", "runtime_error", "memory_limit"), limits={"time_ms": 2000}),
    Case("fork bomb (c)", "c", "#include <unistd.h>\nint main(void) { for (;;) fork(); }", ("time_limit", "runtime_error"),
         limits={"time_ms": 2000}),
    # The process limit itself: the cgroup's 128 under runc, gVisor's RLIMIT_NPROC of 128 under runsc
    # (whose cgroup is sized for the sandbox kernel's threads, not the program's processes). The
    # children end at once and stay, unreaped, as processes until their parent does.
    Case("processes stop at the limit", "c", "#include <stdio.h>\n#include <unistd.h>\nint main(void) { int n = 0;"
         " for (;;) { int p = fork(); if (p == 0) _exit(0); if (p < 0) break; n++; }"
         " printf(\"forked %d\\n\", n); return 0; }", ("ok",),
         check=lambda r: 100 <= int(r["stdout"].split()[-1]) <= 128, limits={"time_ms": 5000}),
    Case("thread bomb", "python", "import threading, time\nn = 0\ntry:\n    while True:\n"
         "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); n += 1\n"
         "except Exception as e:\n    print('stopped at', n, type(e).__name__)", ("ok", "runtime_error", "time_limit", "memory_limit"),
         check=lambda r: "ALLOWED" not in r["stdout"], limits={"time_ms": 3000}),
    Case("threads start (the runtime's seccomp lets clone through)", "python",
         "import threading\nt = threading.Thread(target=print, args=('from a thread',))\nt.start()\nt.join()", ("ok",),
         check=out("from a thread")),
    Case("memory bomb (c)", "c", "#include <stdlib.h>\n#include <string.h>\nint main(void) { for (;;) { char *p = malloc(1 << 20);"
         " if (p) memset(p, 1, 1 << 20); } }", ("memory_limit",), limits={"memory_mb": 64}),
    Case("stack overflow", "c", "int f(int n) { volatile char pad[4096]; pad[0] = n; return f(n + 1) + pad[0]; }\n"
         "int main(void) { return f(0); }", ("runtime_error",), check=lambda r: r["signal"] == 11),
    Case("busy loop (c)", "c", "int main(void) { for (;;) {} }", ("time_limit",), limits={"time_ms": 1000}),
    Case("sleeping past the wall limit", "python", "import time\ntime.sleep(60)", ("time_limit",),
         check=lambda r: r["wall_ms"] < 3000, limits={"time_ms": 1000}),
    Case("ignoring SIGTERM", "python", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass",
         ("time_limit",), limits={"time_ms": 1000}),
    Case("stdout flood", "c", '#include <stdio.h>\nint main(void) { for (;;) puts("flood"); }', ("output_limit",),
         check=lambda r: r["truncated"] and len(r["stdout"]) == 65536),
    Case("stderr flood", "python", "import sys\nwhile True: sys.stderr.write('e' * 4096)", ("output_limit",),
         check=lambda r: r["truncated"] and len(r["stderr"]) == 65536),
    Case("one endless line", "python", "import sys\nwhile True: sys.stdout.write('x')", ("output_limit",),
         check=lambda r: r["stdout"] == "x" * 65536),
    Case("filling the work folder", "python", "import os\nf = open('big', 'wb')\ntry:\n    while True: f.write(b'0' * (1 << 20)); f.flush()\n"
         "except OSError as e:\n    print('stopped', e.errno, os.path.getsize('big') // (1 << 20))", ("ok",), check=out("stopped 28")),
    Case("filling /dev/shm", "python", "f = open('/dev/shm/x', 'wb')\ntry:\n    while True: f.write(b'0' * (1 << 20)); f.flush()\n"
         "except OSError as e:\n    print('stopped', e.errno)", ("ok",), check=out("stopped 28")),
    Case("writing outside the work folder", "python", PY_TRY + "".join(
         f"attempt({p!r}, lambda: open({p!r}, 'w'))\n" for p in ("/etc/passwd", "/usr/bin/python3", "/root/x", "/x", "/var/tmp/x")),
         ("ok",), check=absent("ALLOWED")),
    Case("writing /proc/sys and /sys", "python", PY_TRY + "attempt('proc', lambda: open('/proc/sys/kernel/hostname', 'w').write('x'))\n"
         "attempt('sys', lambda: open('/sys/kernel/mm/transparent_hugepage/enabled', 'w').write('never'))\n"
         "attempt('sysrq', lambda: open('/proc/sysrq-trigger', 'w').write('b'))\n", ("ok",), check=absent("ALLOWED")),
    Case("reading /etc/shadow", "python", PY_TRY + "attempt('shadow', lambda: open('/etc/shadow').read())\n", ("ok",),
         check=out("shadow refused")),
    Case("looking for the worker's secrets", "python", "import os\nprint(sorted(os.environ))\n"
         "print(open('/proc/1/environ', 'rb').read())\nprint(open('/proc/1/cmdline', 'rb').read())", ("ok", "runtime_error"),
         check=absent("CODERUND", "DATABASE", "AMQP", "REDIS", "postgres", "guest")),
    Case("looking for the Docker socket", "python", "import os, glob\n"
         "print([p for p in ['/var/run/docker.sock', '/run/docker.sock', '/run/containerd/containerd.sock'] if os.path.exists(p)])\n"
         "print([s for d in ('/run', '/var', '/tmp', '/box', '/dev') for s in glob.glob(d + '/**/*.sock', recursive=True)])",
         ("ok",), check=out("[]\n[]")),
    Case("network: TCP to the host's services", "python", PY_TRY + "import socket\n" + "".join(
         f"attempt('{h}:{p}', lambda: socket.create_connection(('{h}', {p}), timeout=2))\n"
         for h, p in (("127.0.0.1", 5432), ("127.0.0.1", 6379), ("127.0.0.1", 5672), ("::1", 5432))), ("ok",), check=absent("ALLOWED")),
    Case("network: DNS", "python", PY_TRY + "import socket\nattempt('dns', lambda: socket.getaddrinfo('deb.debian.org', 80))\n",
         ("ok",), check=out("dns refused")),
    Case("network: raw and packet sockets", "python", PY_TRY + "import socket\n"
         "attempt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))\n"
         "attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))\n", ("ok",), check=absent("ALLOWED")),
    Case("network: only loopback exists", "python", "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))", ("ok",),
         check=lambda r: r["stdout"].strip() in ("['lo']", "[]")),
    Case("setuid(0)", "python", PY_TRY + "attempt('setuid', lambda: os.setuid(0))\nattempt('setgid', lambda: os.setgid(0))\n"
         "print(os.getuid(), os.geteuid())", ("ok",), check=lambda r: "ALLOWED" not in r["stdout"] and "65534 65534" in r["stdout"]),
    Case("unshare, mount, ptrace, chroot", "python", LIBC +
         "print('unshare', libc.unshare(0x10000000))\n"  # CLONE_NEWUSER
         "print('mount', libc.mount(b'none', b'/box', b'tmpfs', 0, None))\n"
         "print('ptrace', libc.ptrace(16, os.getppid(), None, None))\n"  # PTRACE_ATTACH to the supervisor
         "print('chroot', libc.chroot(b'/box'))\n", ("ok",),
         check=out("unshare -1", "mount -1", "ptrace -1", "chroot -1"),
         # gVisor implements namespaces in its own user-space kernel: a user namespace there lets
         # chroot succeed inside the sandbox, and grants nothing on the host.
         check_on=("runc",)),
    Case("mount and ptrace under any runtime", "python", LIBC +
         "print('mount', libc.mount(b'none', b'/box', b'tmpfs', 0, None))\n"
         "print('ptrace', libc.ptrace(16, os.getppid(), None, None))\n", ("ok",), check=out("mount -1", "ptrace -1")),
    Case("kill(-1)", "python", "import os, signal\nos.kill(-1, signal.SIGKILL)", ("runtime_error",)),
    Case("children that detach and outlive the task", "python", "import os, subprocess\n"
         f"subprocess.Popen(['setsid', 'sleep', '{MARKER}'])\n"
         f"if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execvp('sleep', ['sleep', '{MARKER}'])\n    os._exit(0)\n"
         "print('parent leaves')", ("ok",), check=out("parent leaves")),
    Case("huge argv", "python", PY_TRY + "attempt('argv', lambda: os.execv('/bin/true', ['true'] + ['x' * 100000] * 1000))\n",
         ("ok",), check=out("argv refused")),
    Case("huge environment", "python", PY_TRY + "attempt('env', lambda: os.execve('/bin/true', ['true'], {'X': 'y' * (8 << 20)}))\n",
         ("ok",), check=out("env refused")),
    Case("non-UTF-8 and NUL bytes", "python", "import sys\nsys.stdout.buffer.write(bytes(range(256)))", ("ok",),
         check=lambda r: "\x00" in r["stdout"] and "\ufffd" in r["stdout"]),
    Case("path tricks in arguments are plain strings", "python", "import sys\nprint(sys.argv[1:])", ("ok",),
         check=out("['../../etc/passwd', '/proc/self/root']")),
    Case("compile-time bomb: #include /dev/zero", "c", '#include "/dev/zero"\nint main(void) { return 0; }', ("compile_error",)),
    Case("compile-time bomb: recursive include", "c", "#include __FILE__\nint main(void) { return 0; }", ("compile_error",)),
    Case("go: a compile error flood is capped", "go", "package main\nfunc main() {\n" + "x := undefined\n" * 2000 + "}\n",
         ("compile_error",), check=lambda r: len(r["compile_output"]) < 70000),
    Case("tampering with the supervisor", "python", PY_TRY + "attempt('write', lambda: open('/.coderund/supervise', 'wb').write(b'x'))\n"
         "attempt('remove', lambda: os.remove('/.coderund/supervise'))\nattempt('stdin', lambda: open('/.coderund/stdin', 'w'))\n",
         ("ok",), check=absent("ALLOWED")),
    Case("too many open files", "python", "import os\nfds = []\ntry:\n    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\n"
         "except OSError as e:\n    print('stopped', e.errno, len(fds) < 300)", ("ok",), check=out("stopped 24 True")),
    Case("one CPU only", "c", "#include <pthread.h>\nvoid *spin(void *a) { for (;;) {} return a; }\n"
         "int main(void) { pthread_t t[4]; for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, spin, 0); spin(0); }",
         ("time_limit",), check=lambda r: r["time_ms"] <= r["wall_ms"] * 1.5 + 100, limits={"time_ms": 1000},
         check_on=("runc",)),  # gVisor reports CPU time of its own virtual CPUs; the host cgroup still caps it
    # The supervisor is another identity than the program, under every runtime: its report stream
    # (once writable through /proc/1/fd under gVisor, forging any verdict) and its process are out of reach.
    Case("forging the report through the supervisor's descriptors", "python", PY_TRY +
         "for fd in (0, 1, 2):\n    attempt(f'open {fd}', lambda fd=fd: os.open(f'/proc/1/fd/{fd}', os.O_WRONLY))\n"
         "attempt('forge', lambda: os.write(os.open('/proc/1/fd/1', os.O_WRONLY), b'coderund-report exit=0 signal=0 wall_us=1 "
         "cpu_us=1 maxrss_kb=1 timed_out=0 output_over=0 oom=0 stdout=900000000 stderr=0 files=0\\nFORGED'))\n"
         "print('done')", ("ok",),
         check=lambda r: "ALLOWED" not in r["stdout"] and "FORGED" not in r["stdout"] and r["stdout"].endswith("done\n")),
    Case("signalling the supervisor", "python", PY_TRY + "import signal\n"
         "for name in ('SIGTERM', 'SIGKILL', 'SIGINT', 'SIGHUP', 'SIGUSR1', 'SIGSTOP'):\n"
         "    attempt(name, lambda name=name: os.kill(1, getattr(signal, name)))\nprint('still here')", ("ok",),
         check=lambda r: r["stdout"].count("refused PermissionError") == 6 and "still here" in r["stdout"]),
    Case("io_uring is denied", "python", LIBC + "params = ctypes.create_string_buffer(120)\n"
         "print('io_uring', libc.syscall(425, 8, params), ctypes.get_errno())", ("ok",), check=out("io_uring -1 1\n")),
    Case("no host processes visible", "python", "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)",
         ("ok",), check=out("True")),
]


AS_TEST_CASES = ["forging the report through the supervisor's descriptors", "signalling the supervisor", "io_uring is denied",
                 "kill(-1)", "fork bomb (python)", "children that detach and outlive the task", "setuid(0)"]


@pytest.fixture(scope="module")
async def hostile_token(runtime_api):
    return await runtime_api.user("hostile")


def containers(**filters: str) -> list:
    # The low-level list: it does not inspect each container, which may be gone in between.
    return docker.from_env().api.containers(all=True, filters=filters)


async def run_live(api: Any, token: str, **task: Any) -> tuple[str, dict[str, Any]]:
    """The task over /ws, its stdin ended at once; its id and result, the streamed output checked
    against the stored one."""
    streamed = {"stdout": "", "stderr": ""}
    async with api.session.ws_connect(f"{api.base}/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send_json({"type": "run", "task": task})
        while (message := await ws.receive_json(timeout=120))["type"] != "result":
            if message["type"] == "accepted":
                task_id = message["task_id"]
                await ws.send_json({"type": "eof"})
            elif message["type"] in streamed:
                streamed[message["type"]] += message["data"]
    result = message["result"]
    assert streamed == {"stdout": result["stdout"], "stderr": result["stderr"]}, (streamed, result)
    return task_id, result


@pytest.mark.parametrize("live", [False, True], ids=["submitted", "live"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_program(runtime_api, hostile_token, case, live, settings):
    """Each case as a plain submission and as a live run (/ws: stdin a pipe fed as it comes, output
    streamed): the supervisor's live mode keeps every property."""
    task = {"language": case.language, "code": case.code, "limits": case.limits, "args": ["../../etc/passwd", "/proc/self/root"]}
    if live:
        task_id, result = await run_live(runtime_api, hostile_token, **task)
    else:
        task_id = await runtime_api.submit(hostile_token, **task)
        result = await runtime_api.result(hostile_token, task_id)
    assert result["verdict"] in case.verdicts, result
    assert runtime_api.runtime not in case.check_on or case.check(result), result
    container = await container_of(settings, task_id)
    # Removal runs just after the result is stored; under gVisor, a sandbox that held a hundred
    # processes takes a few seconds more to tear down, and on a loaded machine can outlast the
    # engine's 12 s wait for its kill, when the removal is tried again (Engine._remove).
    for _ in range(600):
        if not containers(id=container):
            break
        await asyncio.sleep(0.1)
    assert not containers(id=container)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in AS_TEST_CASES], ids=lambda c: c.name)
async def test_hostile_program_as_a_test_case(runtime_api, hostile_token, case):
    """The same properties when the program runs as a judge's test case."""
    task_id = await runtime_api.submit(hostile_token, language=case.language, code=case.code, limits=case.limits,
                                       args=["../../etc/passwd", "/proc/self/root"], tests=[{"stdin": "", "expected": "-"}])
    [result] = (await runtime_api.result(hostile_token, task_id))["tests"]
    # Expected output no program prints: what would be "ok" is judged a wrong answer.
    verdict = "ok" if result["verdict"] == "wrong_answer" else result["verdict"]
    assert verdict in case.verdicts, result
    assert runtime_api.runtime not in case.check_on or case.check(result), result


LEFTOVERS = LIBC + """import subprocess
found = []
for name, path in (('box', 'left-in-box'), ('box-folder', 'left/x'), ('tmp', '/tmp/left'), ('shm', '/dev/shm/left')):
    if os.path.exists(path): found.append(name)
if open(__file__).read().endswith('# tampered'): found.append('source')
if any(b'987653' in open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()):
    found.append('process')
if libc.shmget(0x4242, 0, 0) != -1: found.append('ipc')
print('found', sorted(found))
os.makedirs('left', mode=0o000, exist_ok=True)
os.chmod('left', 0o700); open('left/x', 'w').write('x'); os.chmod('left', 0o000)
for path in ('left-in-box', '/tmp/left', '/dev/shm/left'): open(path, 'w').write('x')
libc.shmget(0x4242, 4096, 0o1000 | 0o600)
subprocess.Popen(['setsid', 'sleep', '987653'])
open(__file__, 'a').write('\\n# tampered')
"""


async def test_cases_share_a_sandbox_and_nothing_crosses_from_one_to_the_next(runtime_api, hostile_token, settings):
    """Each case looks for what an earlier one could have left (files in the work folder, /tmp and
    /dev/shm, a folder it cannot read, its own source changed, a process, a System V segment), then
    leaves all of them: every case finds nothing, though they share their lanes' sandboxes."""
    cases = [{"stdin": "", "expected": "found []"} for _ in range(6)]
    task_id = await runtime_api.submit(hostile_token, language="python", code=LEFTOVERS, tests=cases)
    result = await runtime_api.result(hostile_token, task_id)
    assert result["passed"] == 6, [(t["verdict"], t["stdout"], t["stderr"][-300:]) for t in result["tests"]]
    assert all(t["time_ms"] is not None and t["time_ms"] < 2000 for t in result["tests"])  # each case its own figures


async def test_a_case_that_kills_its_sandbox_fails_alone(runtime_api, hostile_token):
    """The memory bomb case fails; the cases after it run on in a fresh sandbox."""
    code = "import sys\nif sys.stdin.read().strip() == 'bomb':\n    x = [bytearray(1 << 20) for _ in range(10000)]\nprint('fine')"
    cases = [{"stdin": s, "expected": "fine"} for s in ("a", "bomb", "b", "c")]
    task_id = await runtime_api.submit(hostile_token, language="python", code=code, tests=cases, limits={"memory_mb": 64})
    result = await runtime_api.result(hostile_token, task_id)
    verdicts = [t["verdict"] for t in result["tests"]]
    assert verdicts[1] == "memory_limit" and verdicts[0] == verdicts[2] == verdicts[3] == "ok", verdicts


async def test_tasks_cannot_see_each_other(runtime_api, hostile_token):
    writer = runtime_api.run(hostile_token, language="python",
                             code="import time\nopen('secret-of-a', 'w').write('a')\nopen('/tmp/secret-of-a', 'w').write('a')\ntime.sleep(2)")
    reader = runtime_api.run(hostile_token, language="python",
                             code="import os, time\ntime.sleep(1)\nprint(os.listdir('.'), os.listdir('/tmp'))\n"
                                  "print([p for p in os.listdir('/proc') if p.isdigit()])")
    written, read = await asyncio.gather(writer, reader)
    assert written["verdict"] == "ok" and read["verdict"] == "ok"
    assert "secret-of-a" not in read["stdout"]


async def test_afterwards_the_next_task_runs_and_nothing_outlived_its_task(runtime_api, hostile_token):
    result = await runtime_api.run(hostile_token, language="python", code="print('still fine')")
    assert result["verdict"] == "ok" and result["stdout"] == "still fine\n"
    host = subprocess.run(["pgrep", "-f", f"sleep {MARKER}"], capture_output=True, text=True)
    assert host.stdout == "", f"processes outlived their task: {host.stdout}"
    with psycopg.connect(runtime_api.settings.database_url) as conn:  # this deployment's containers only
        deployment = str(conn.execute("SELECT id FROM deployment").fetchone()[0])
    for _ in range(50):  # only warm containers, still waiting for a task, may remain
        left = [c for c in containers(label=f"coderund.deployment={deployment}")
                if c["State"] != "running" or "coderund.warm" not in c["Labels"]]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert not left, [(c["Names"], c["State"]) for c in left]
