"""A task's life in the sandbox: (build, or take the build from the cache) → run.

Each step runs in a container of its own, used once: a warm one from the pool when the step's shape
is one the pool keeps, else one made now (the cold path). The build's output moves to the run as
plain files. The test cases of one task share a few containers (lanes), wiped between cases: one
user's one submission, never another's.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time

from .. import metrics
from ..domain import (CaseResult, Limits, Program, Result, RunReport, Task, TestCase, Verdict, case_result,
                      judged, run_result, select_artifacts)
from ..plugins import Plugin
from . import supervisor
from .box import Box, Died, Live
from .compile_cache import Build, CompileCache, key
from .egress import Egress
from .engine import SETTLE_S, Engine, SandboxError, SandboxRefused, Shape
from .gate import FairGate
from .options import LABEL, MB
from .pool import WarmPool
from .supervisor import FOLDER, NO_LIMITS, Files, RunLimits

log = logging.getLogger(__name__)
GRACE_S = 15  # beyond the supervisor's own wall limit, before we stop waiting for the engine
IMAGE_ID_TTL_S = 30  # how long an image's id is trusted for cache keys before it is looked up again
SUPERVISOR_FAILED = 125  # its exit code when it cannot do what it was asked
KILLED = 128 + 9  # a container's exit code when its first process got SIGKILL
REPORT_SLACK = 64 * 1024  # a report's header and items' framing, beyond the bytes the caps allow
SUPERVISOR_PIDS = 1  # in a container's pids count beside the program's: the supervisor
# gVisor's sentry (runsc 20221219) runs a busy sandbox task on about 8 host threads (measured: 21 busy
# processes need 256 host pids, 128 need 1024), beside its own few dozen.
GVISOR_HOST_THREADS, GVISOR_BASE_THREADS = 10, 64
# What another lane of test cases costs before its first case when a warm sandbox is ready: its
# hand-off (a fresh one costs what the engine's recent starts took: Engine.start_s).
WARM_LANE_S = 0.01


class Sandbox:
    def __init__(self, engine: Engine, pool: WarmPool, cache: CompileCache, gate: FairGate, *, output_limit: int,
                 egress: Egress | None = None) -> None:
        self.engine = engine
        self.egress = egress  # None: egress is off, and no task has a network policy
        self.gate = gate  # every step holds one of the worker's slots, shared fairly among users
        self.pool = pool
        self.cache = cache
        self.output_limit = output_limit
        self._image_ids: dict[str, tuple[str, float]] = {}

    def serve(self, plugins: list[Plugin]) -> None:
        """Keeps warm containers for every plugin's default shapes."""
        pids, _ = self.program_limits(None)
        for plugin in plugins:
            self.pool.serve(run_shape(plugin, plugin.limits, pids))
            if plugin.compile:
                self.pool.serve(run_shape(plugin, plugin.compile_limits, pids))

    def refill(self) -> None:
        """A task is done: the warm containers it took are replaced, not while it ran, nor while its
        result is on its way to the client (measured: both take twice as long beside a refill)."""
        asyncio.get_running_loop().call_later(SETTLE_S, self.pool.wake)

    async def execute(self, plugin: Plugin, task: Task, labels: dict[str, str], case_parallel: int = 1,
                      live: Live | None = None) -> Result:
        """Builds once (or takes the build from the cache), then runs the program, or each test case in a
        container of its own. A failing program is a result; a failing platform raises SandboxError.
        With live, the compiler's and the program's output go to it as they come, and the program's
        stdin comes from it (test cases are never live). A task's own Program replaces the plugin's
        commands and adds its process limits to the run. With a network policy, the run (not the build:
        a cached build must not depend on what the network said) reaches what the policy allows through
        an egress session of its own."""
        if task.network is None:
            return await self._execute(plugin, task, labels, case_parallel, live, None)
        if self.egress is None:
            raise SandboxRefused("this task has a network policy and this worker's egress is off")
        session = await self.egress.open(task.id.hex, task.network)
        try:
            result = await self._execute(plugin, task, labels, case_parallel, live, str(session.folder))
        finally:
            await self.egress.close(session)
        return dataclasses.replace(result, network_usage=session.counts())

    async def _execute(self, plugin: Plugin, task: Task, labels: dict[str, str], case_parallel: int, live: Live | None,
                       egress: str | None) -> Result:
        plugin = plugin.adapted(task.program)
        pids, rlimits = self.program_limits(task.program)
        files = Files({plugin.source_file: task.code.encode(), **{name: text.encode() for name, text in task.files}})
        compile_output = b""
        if plugin.compile:
            build = await self._build(plugin, task.user_id, files, labels, live)
            if isinstance(build, Result):
                return build
            files, compile_output = build.files, build.compile_output
        if not task.tests:
            report, container, left = await self._run(plugin, task.user_id, task.limits, labels, files, task.stdin,
                                                      task.args, live, pids=pids, rlimits=rlimits, collect=bool(task.outputs),
                                                      egress=egress)
            result = run_result(report, task.limits.memory_mb, compile_output, container)
            if not task.outputs:
                return result
            # Only what the run itself left: the sources and the build's files are not brought back as its.
            written = {name: content for name, content in (left.data if left else {}).items()
                       if files.data.get(name, FOLDER) != content}
            artifacts, truncated = select_artifacts(written, task.outputs)
            return dataclasses.replace(result, artifacts=artifacts, artifacts_truncated=truncated)
        return await self._judge(plugin, task, labels, files, compile_output, case_parallel, pids, rlimits, egress)

    async def _run(self, plugin: Plugin, who: int, limits: Limits, labels: dict[str, str], files: Files, stdin: str,
                   args: list[str] | tuple[str, ...], live: Live | None = None, pids: int | None = None,
                   rlimits: RunLimits = NO_LIMITS, collect: bool = False,
                   egress: str | None = None) -> tuple[RunReport, str, Files | None]:
        """The run, and with collect the work folder it left (its names still to be made safe)."""
        report, left, container = await self._step(run_shape(plugin, limits, pids, egress), who, labels, files, stdin.encode(),
                                                   plugin.run_command(limits, args), limits, collect=collect, live=live,
                                                   rlimits=rlimits)
        return _ran(plugin, report), container, work_files(left, self.engine.isolation.tmpfs_mb * MB) if left else None

    async def _judge(self, plugin: Plugin, task: Task, labels: dict[str, str], files: Files, compile_output: bytes,
                     parallel: int, pids: int | None, rlimits: RunLimits, egress: str | None) -> Result:
        """The cases run in a few sandboxes (lanes, up to `parallel`), each running its share one after
        another: every case a fresh process tree in the work folder laid anew, with the task's limits,
        nothing of the last case left (the supervisor's MULTI mode). A case that kills its sandbox fails
        alone: the lane goes on in a fresh one. With stop_on_failure they run in order in one lane and
        the rest are skipped after the first failure."""
        results: list[CaseResult | None] = [None] * len(task.tests)
        containers: list[str] = []
        todo = collections.deque(enumerate(task.tests))
        shape = run_shape(plugin, task.limits, pids, egress)
        max_bytes = 4 * self.output_limit + REPORT_SLACK
        failed = False

        closed = False  # the task has its result: a lane still getting its sandbox takes no case

        def wanted() -> bool:
            return bool(todo) and not failed and not closed

        def request(case: TestCase, first: bool) -> bytes:
            """A case's request: a sandbox's first lays the work folder, the next ones run in it anew."""
            stdin, command = case.stdin.encode(), plugin.run_command(task.limits, case.args)
            if first:
                return supervisor.request(files, stdin, command, wall_ms=task.limits.time_ms, output_cap=self.output_limit,
                                          collect=False, multi=True, limits=rlimits)
            return supervisor.next_run(stdin, command)

        async def lane() -> None:
            """Runs cases while any is left. A lane opened beside the first joins the task, which then
            waits for it, only once its sandbox is ready and cases are still left: a task never waits
            for a sandbox it no longer needs (a fresh one's start may outlast the cases)."""
            nonlocal failed
            box: Box | None = None
            try:
                while wanted():
                    async with self.gate.slot(task.user_id):
                        first = box is None or not box.alive
                        if first and wanted():
                            if box is not None:
                                self.engine.discard(box)
                            box = await self._box(shape, labels)
                        if box is None or not wanted():
                            break  # the other lanes took what was left while this one waited
                        joined = asyncio.current_task()
                        if joined in opening:
                            opening.discard(joined)
                            lanes.append(joined)
                        # One case goes in ahead of the report awaited (the supervisor takes it as soon as
                        # it has wiped), until the lane's share is done or another step waits for a slot.
                        sent = collections.deque([todo.popleft()])
                        with contextlib.suppress(Died):  # the receive below finds out
                            await box.send(request(sent[0][1], first))
                        while sent and not failed:
                            if todo and len(sent) == 1 and not self.gate.waiting:
                                sent.append(todo.popleft())
                                with contextlib.suppress(Died):
                                    await box.send(request(sent[1][1], False))
                            i, case = sent.popleft()
                            started, report_of = time.monotonic(), box.id
                            try:
                                report, _ = await asyncio.wait_for(box.receive(max_bytes), task.limits.time_ms / 1000 + GRACE_S)
                            except TimeoutError:
                                raise SandboxError(f"a {task.limits.time_ms} ms case did not finish") from None
                            except Died as died:
                                report = await self._died(box.id, died, task.limits, started)
                                todo.extendleft(reversed(sent))  # lost with the sandbox, not run: they go again
                                sent.clear()
                                self.engine.discard(box)
                                box = None
                            containers.append(report_of)
                            results[i] = case_result(_ran(plugin, report), task.limits.memory_mb, case.expected, task.checker)
                            failed = failed or (task.stop_on_failure and results[i].verdict is not Verdict.OK)
                            widen(time.monotonic() - started)
            finally:
                if box is not None:
                    self.engine.discard(box)

        lanes: list[asyncio.Future[None]] = []  # the ones the task waits for
        opening: set[asyncio.Future[None]] = set()  # opened beside the first, not joined yet
        most = 1 if task.stop_on_failure else max(1, min(parallel, len(task.tests)))

        def widen(took_s: float) -> None:
            count = len(lanes) + len(opening)
            start_s = WARM_LANE_S if self.pool.has(shape) else self.engine.start_s
            if count < most and not self.gate.waiting and pays(count, len(todo), took_s, start_s):
                added = asyncio.ensure_future(lane())
                opening.add(added)
                added.add_done_callback(ended)

        def ended(lane_: asyncio.Future[None]) -> None:
            """A lane that never joined ends unawaited: its failure (its sandbox would not start) is
            only logged, as the other lanes run the cases."""
            if lane_ in opening:
                opening.discard(lane_)
                if not lane_.cancelled() and (e := lane_.exception()) is not None:
                    log.warning("task %s: a lane of test cases did not open: %s", labels[f"{LABEL}.task"], e)

        lanes.append(asyncio.ensure_future(lane()))
        try:
            for running in lanes:  # it grows as lanes join
                await running
        finally:
            closed = True
            for running in lanes:
                running.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        return judged([r or CaseResult(Verdict.SKIPPED) for r in results], compile_output,
                      containers[-1] if containers else None)

    async def _build(self, plugin: Plugin, who: int, sources: Files, labels: dict[str, str], live: Live | None) -> Build | Result:
        limits = plugin.compile_limits
        command = plugin.compile_command(list(sources.data))
        cache_key = key(plugin=plugin.name, image_id=await self._image_id(plugin.image), command=command,
                        env=plugin.environment(limits), memory_mb=limits.memory_mb, time_ms=limits.time_ms, sources=sources)
        cached = await asyncio.to_thread(self.cache.get, cache_key, plugin.name)
        if cached is not None:
            if live and cached.compile_output:
                await live.output("compile", cached.compile_output)
            return cached
        # Live, the compiler's stdout and stderr are both compile output, and it gets no stdin.
        compiling = Live(lambda _, data: live.output("compile", data)) if live else None
        pids, rlimits = self.program_limits(None)
        report, files, container = await self._step(run_shape(plugin, limits, pids), who, labels, sources, b"", command,
                                                     limits, collect=True, live=compiling, rlimits=rlimits)
        metrics.COMPILE_TIME.labels(plugin.name).observe(report.wall_ms / 1000)
        compile_output = report.stdout + report.stderr
        problem = _compile_problem(report, limits)
        if problem is not None:
            if live and problem:  # what the result says, a live client sees too
                await live.output("compile", problem.encode())
            return Result(Verdict.COMPILE_ERROR, exit_code=report.exit_code, signal=report.signal,
                          compile_output=compile_output + problem.encode(), wall_ms=report.wall_ms, container=container)
        if files is None:
            raise SandboxError("the build's report carried no files")
        build = Build(work_files(files, self.engine.isolation.tmpfs_mb * 1024 * 1024), compile_output)
        await asyncio.to_thread(self.cache.put, cache_key, build)
        return build

    async def _box(self, shape: Shape, labels: dict[str, str]) -> Box:
        """A warm container of that shape, or one made now (always, with egress: its folder is this task's)."""
        return (None if shape.egress else self.pool.take(shape)) or await self.engine.make(shape, {f"{LABEL}.task": labels[f"{LABEL}.task"]})

    async def _step(self, shape: Shape, who: int, labels: dict[str, str], files: Files, stdin: bytes,
                    program: tuple[str, ...], limits: Limits, *, collect: bool = False, live: Live | None = None,
                    rlimits: RunLimits = NO_LIMITS) -> tuple[RunReport, Files | None, str]:
        """One program in a slot of the worker's, in a container of its own, which goes away afterwards
        whatever happened."""
        async with self.gate.slot(who):
            box = await self._box(shape, labels)
            log.debug("task %s: container %s", labels[f"{LABEL}.task"], box.id[:12])
            request = supervisor.request(files, stdin, program, wall_ms=limits.time_ms, output_cap=self.output_limit,
                                         collect=collect, live=live is not None,
                                         terminal=live is not None and live.terminal, limits=rlimits)
            # Live pieces and the report each carry at most the caps; a build's files at most the work folder.
            max_bytes = 4 * self.output_limit + REPORT_SLACK + (2 * self.engine.isolation.tmpfs_mb * MB if collect else 0)
            started = time.monotonic()
            try:
                return *await asyncio.wait_for(box.exchange(request, max_bytes, live), limits.time_ms / 1000 + GRACE_S), box.id
            except TimeoutError:
                raise SandboxError(f"a {limits.time_ms} ms step did not finish") from None
            except Died as died:
                report = await self._died(box.id, died, limits, started)
                if live and report.stderr:  # our note on how it died: a live client sees it too
                    await live.output("stderr", report.stderr)
                return report, None, box.id
            finally:
                self.engine.discard(box)

    async def _died(self, container: str, died: Died, limits: Limits, started: float) -> RunReport:
        """The stream ended without a report. If the container died under the program (gVisor ends
        the whole sandbox at the memory limit; some bombs take the supervisor down), that is the
        program's doing: a result, not a retry."""
        state = await self.engine.state(container)
        if state.get("Running") or state.get("ExitCode") == SUPERVISOR_FAILED:
            raise SandboxError(f"no report from the supervisor (container {state.get('Status')}): {died}")
        # SIGKILL of the container's first process, while we still waited on it, is an OOM killer's:
        # nothing inside may signal it, and we remove a container only after its step. The engine
        # does not always flag it (gVisor's own OOM handling may pick the supervisor).
        oom = bool(state.get("OOMKilled")) or state.get("ExitCode") == KILLED
        note = b"" if oom else f"coderund: the sandbox died while the program ran (exit {state.get('ExitCode')})\n".encode()
        return RunReport(exit_code=None, signal=9, wall_ms=int((time.monotonic() - started) * 1000), cpu_ms=0,
                         memory_kb=limits.memory_mb * 1024 if oom else 0, timed_out=False, output_over=False, oom=oom,
                         stdout=b"", stderr=note)

    def program_limits(self, program: Program | None) -> tuple[int | None, RunLimits]:
        """A step's process limits (a Program's own, else the isolation's): its container's pids limit
        (None: the isolation's), and its process's rlimits. Processes are counted by the container's
        pids cgroup under runc (RLIMIT_NPROC would count every sandbox's programs: one uid on the
        host), by RLIMIT_NPROC under gVisor, whose own kernel counts only the sandbox's; there the
        cgroup counts the sandbox kernel's host threads, and a runtime of many threads (the BEAM, a
        JVM) that ran them out would end the whole sandbox."""
        limits = NO_LIMITS if program is None else RunLimits(address_space=program.address_space_mb * MB,
                                                             file_size=program.file_size_mb * MB)
        processes = program.processes if program is not None and program.processes else None
        if self.engine.isolation.runtime == "runsc":
            processes = processes or self.engine.isolation.pids_limit
            host = max(self.engine.isolation.pids_limit, GVISOR_HOST_THREADS * processes + GVISOR_BASE_THREADS)
            return host, dataclasses.replace(limits, processes=processes)
        return (None if processes is None else processes + SUPERVISOR_PIDS), limits

    async def _image_id(self, image: str) -> str:
        found = self._image_ids.get(image)
        if found is None or time.monotonic() - found[1] > IMAGE_ID_TTL_S:
            found = (await self.engine.call(self.engine.image_id, image), time.monotonic())
            self._image_ids[image] = found
        return found[0]


def pays(lanes: int, left: int, took_s: float, start_s: float) -> bool:
    """Whether another lane pays, after a case that took took_s: when the cases left would keep the
    lanes busy longer than starting it takes (start_s: a warm sandbox's hand-off, or a fresh one's start)."""
    return left * took_s / lanes > start_s


def _ran(plugin: Plugin, report: RunReport) -> RunReport:
    metrics.RUN_TIME.labels(plugin.name).observe(report.wall_ms / 1000)
    return plugin.read_errors(report)


def run_shape(plugin: Plugin, limits: Limits, pids: int | None = None, egress: str | None = None) -> Shape:
    return Shape(plugin.image, limits.memory_mb, plugin.environment(limits), pids, egress)


def _compile_problem(report: RunReport, limits: Limits) -> str | None:
    """None when the build succeeded, else a note for the end of the compiler's output."""
    if report.timed_out:
        return f"\ncompilation exceeded its time limit of {limits.time_ms} ms\n"
    if report.output_over:
        return "\ncompiler output exceeded its limit\n"
    if report.signal:
        return f"\ncompiler killed by signal {report.signal} (memory limit {limits.memory_mb} MB)\n"
    return "" if report.exit_code != 0 else None


def work_files(files: Files, max_bytes: int) -> Files:
    """What a sandboxed build left in the work folder, reduced to plain folders and regular files
    with safe relative names: anything naming '..' or an absolute path is dropped."""
    safe = Files()
    total = 0
    for name, content in files.data.items():
        path = os.path.normpath(name)
        if path == "." or path.startswith(("/", "..")) or "/../" in f"/{path}/":
            continue
        if content is not FOLDER:
            total += len(content)
            if total > max_bytes:
                raise SandboxError(f"the build left more than {max_bytes} bytes")
        safe.data[path] = content
        safe.modes[path] = 0o755 if content is FOLDER or files.modes.get(name, 0) & 0o111 else 0o644
    return safe
