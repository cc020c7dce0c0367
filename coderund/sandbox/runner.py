"""A task's life in Docker: prepare a container, run steps in it, remove it.

The Docker SDK is synchronous, so every call runs on a thread pool of our own, sized to the
worker's concurrency, and the event loop never blocks on the engine.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import socket
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.utils.socket import consume_socket_output, demux_adaptor, frames_iter

from .. import metrics
from ..domain import Limits, Result, RunReport, Verdict, run_result
from ..plugins import Plugin
from . import supervisor
from .options import CREATE_KEYS, LABEL, SANDBOX_USER, TOOLS_DIR, WORKDIR, Isolation, container_options

log = logging.getLogger(__name__)
T = TypeVar("T")
STDIN_PATH = f"{TOOLS_DIR}/stdin"
SUPERVISOR_PATH = f"{TOOLS_DIR}/supervise"
GRACE_S = 15  # beyond the supervisor's own wall limit, before we stop waiting for the engine


class SandboxError(Exception):
    """The platform failed (engine down, container gone); not the task's fault."""


class Sandbox:
    def __init__(
        self, client: docker.DockerClient, *, isolation: Isolation, output_limit: int, supervisor_binary: Path, threads: int
    ) -> None:
        self.client = client
        self.isolation = isolation
        self.output_limit = output_limit
        self.supervisor = supervisor_binary.read_bytes()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="docker")
        self._removals: set[asyncio.Future[None]] = set()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise SandboxError(f"docker: {e}") from e

    async def close(self) -> None:
        if self._removals:
            await asyncio.wait(self._removals, timeout=30)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def execute(
        self, plugin: Plugin, limits: Limits, *, code: str, stdin: str, args: list[str], name: str, labels: dict[str, str]
    ) -> Result:
        """(compile) → run, each step in a fresh container with its own limits; a failing program is a
        result, a failing platform raises. The build's output moves from one to the other as files."""
        source = {f"{WORKDIR}/{plugin.source_file}": code.encode()}
        files, modes, compile_output = source, {}, b""
        if plugin.compile:
            async with self.container(plugin, plugin.compile_limits.memory_mb, name=f"{name}-build", labels=labels) as build:
                await build.upload(source)
                report = await build.run(plugin.compile, plugin.compile_limits)
                metrics.COMPILE_TIME.labels(plugin.name).observe(report.wall_ms / 1000)
                compile_output = report.stdout + report.stderr
                problem = _compile_problem(report, plugin.compile_limits)
                if problem is not None:
                    return Result(Verdict.COMPILE_ERROR, exit_code=report.exit_code, signal=report.signal,
                                  compile_output=compile_output + problem.encode(), wall_ms=report.wall_ms)
                files, modes = await build.download()  # the sources and what the build made of them
        async with self.container(plugin, limits.memory_mb, name=name, labels=labels) as box:
            await box.upload({STDIN_PATH: stdin.encode(), **files}, modes)
            report = await box.run((*plugin.run, *args), limits, stdin_path=STDIN_PATH)
            metrics.RUN_TIME.labels(plugin.name).observe(report.wall_ms / 1000)
            return run_result(report, limits.memory_mb, compile_output)

    @contextlib.asynccontextmanager
    async def container(self, plugin: Plugin, memory_mb: int, *, name: str, labels: dict[str, str]) -> AsyncIterator[Box]:
        options = container_options(
            image=plugin.image, name=name, memory_mb=memory_mb, isolation=self.isolation, env=dict(plugin.env), labels=labels
        )
        started = time.monotonic()
        try:
            container = await self.call(self._start, options)
        except SandboxError:
            await self.call(self._remove, name)  # a half-made container must not linger
            raise
        metrics.CONTAINER_START.observe(time.monotonic() - started)
        try:
            yield Box(self, container)
        finally:
            # Off the task's critical path: the result is stored while the container goes away.
            removal = asyncio.ensure_future(self.call(self._remove, container))
            self._removals.add(removal)
            removal.add_done_callback(self._removals.discard)

    def _start(self, options: dict[str, Any]) -> str:
        api = self.client.api
        host_config = api.create_host_config(**{k: v for k, v in options.items() if k not in CREATE_KEYS})
        container = api.create_container(host_config=host_config, **{k: v for k, v in options.items() if k in CREATE_KEYS})
        api.start(container["Id"])
        return container["Id"]

    def _remove(self, container: str) -> None:
        """Cleanup never raises: a container that cannot be removed now is swept later."""
        try:
            self.client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001 - logged, and the leftover sweep retries
            log.warning("could not remove container %s: %s", container[:12], e)

    def remove_leftovers(self, is_alive: Callable[[str], bool]) -> int:
        """Removes containers whose worker is gone (it died before its cleanup ran)."""
        removed = 0
        # The low-level list: it does not inspect each container, which may be gone in between.
        for container in self.client.api.containers(all=True, filters={"label": LABEL}):
            if not is_alive(container["Labels"].get(f"{LABEL}.worker", "")):
                self._remove(container["Id"])
                removed += 1
        return removed


class Box:
    """One prepared container: files go in, programs run, reports come out."""

    def __init__(self, sandbox: Sandbox, container_id: str) -> None:
        self.sandbox = sandbox
        self.id = container_id

    async def upload(self, files: dict[str, bytes], modes: dict[str, int] | None = None) -> None:
        """As root, so that the task cannot alter what it is given (the supervisor above all)."""
        archive = _tar({SUPERVISOR_PATH: self.sandbox.supervisor, **files}, {SUPERVISOR_PATH: 0o755, **(modes or {})})
        await self.sandbox.call(self._checked, ["tar", "-x", "-C", "/", "-f", "-"], "0:0", archive)

    async def download(self) -> tuple[dict[str, bytes], dict[str, int]]:
        """The work folder's regular files and folders, with their modes (a build's output)."""
        archive = await self.sandbox.call(self._checked, ["tar", "-c", "-C", WORKDIR, "."], SANDBOX_USER, None)
        return _work_files(archive, self.sandbox.isolation.tmpfs_mb * 1024 * 1024)

    def _checked(self, command: list[str], user: str, stdin: bytes | None) -> bytes:
        stdout, stderr, exit_code = self._exec(command, user, stdin)
        if exit_code != 0:
            raise SandboxError(f"{command[0]} in the container failed: {stderr[-300:]!r}")
        return stdout

    def _exec(self, command: list[str], user: str, stdin: bytes | None, on_socket: Callable[[Any], None] = lambda s: None
              ) -> tuple[bytes, bytes, int | None]:
        """Runs command in the container (stdin, if any, through the exec's own stream: the engine
        cannot copy into a tmpfs behind a read-only root) and returns stdout, stderr, exit code."""
        api = self.sandbox.client.api
        exec_id = api.exec_create(self.id, command, stdin=stdin is not None, user=user, workdir=WORKDIR)["Id"]
        stream = api.exec_start(exec_id, socket=True)
        raw = getattr(stream, "_sock", stream)
        on_socket(raw)
        try:
            if stdin is not None:
                raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)
            frames = (demux_adaptor(*frame) for frame in frames_iter(stream, tty=False))
            stdout, stderr = consume_socket_output(frames, demux=True)
        finally:
            raw.close()
        return stdout or b"", stderr or b"", api.exec_inspect(exec_id)["ExitCode"]

    async def run(self, program: tuple[str, ...], limits: Limits, *, stdin_path: str | None = None) -> RunReport:
        """One program under the supervisor. Watches the container too: under gVisor, hitting the
        memory limit kills the whole container, and the step's stream may never end by itself."""
        command = supervisor.command(SUPERVISOR_PATH, limits.time_ms, self.sandbox.output_limit, stdin_path, program)
        started = time.monotonic()
        sockets: list[Any] = []
        step = asyncio.ensure_future(self.sandbox.call(self._run, command, sockets.append))
        death = asyncio.ensure_future(self.sandbox.call(self.sandbox.client.api.wait, self.id))
        try:
            await asyncio.wait({step, death}, timeout=limits.time_ms / 1000 + GRACE_S, return_when=asyncio.FIRST_COMPLETED)
            if step.done() and step.exception() is None:
                return step.result()
            return await self._failed_step(step, death, limits, started)
        finally:
            death.cancel()  # its thread ends when the container is removed
            for sock in sockets:  # a step given up on must not keep a thread reading forever
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    async def _failed_step(self, step: asyncio.Future[RunReport], death: asyncio.Future[Any], limits: Limits,
                           started: float) -> RunReport:
        error = step.exception() if step.done() else None
        if error is not None:
            await asyncio.wait({death}, timeout=2)  # the engine may learn of an OOM kill a moment later
        else:
            step.cancel()
        state = (await self.sandbox.call(self.sandbox.client.api.inspect_container, self.id))["State"]
        if death.done() and not death.cancelled() and death.exception() is None:
            # The container died under the program (gVisor ends the whole sandbox at the memory
            # limit, and under some fork bombs): the program's doing, so a result, not a retry.
            oom = bool(state.get("OOMKilled"))
            note = b"" if oom else f"coderund: the sandbox died while the program ran (exit {state.get('ExitCode')})\n".encode()
            return RunReport(exit_code=None, signal=9, wall_ms=int((time.monotonic() - started) * 1000), cpu_ms=0,
                             memory_kb=limits.memory_mb * 1024 if oom else 0, timed_out=False, output_over=False,
                             oom=oom, stdout=b"", stderr=note)
        if error is not None:
            raise error
        raise SandboxError(f"a {limits.time_ms} ms step did not finish (container {state.get('Status')})")

    def _run(self, command: list[str], on_socket: Callable[[Any], None]) -> RunReport:
        started = time.monotonic()
        stdout, stderr, exit_code = self._exec(command, SANDBOX_USER, None, on_socket)
        try:
            return supervisor.parse_report(stdout)
        except supervisor.SupervisorError as e:
            if exit_code is not None and exit_code > 128:
                # The program killed its own supervisor (kill(-1) reaches every process of its uid):
                # a runtime error of the program's making, not the platform's.
                return RunReport(exit_code=None, signal=exit_code - 128, wall_ms=int((time.monotonic() - started) * 1000),
                                 cpu_ms=0, memory_kb=0, timed_out=False, output_over=False, oom=False, stdout=b"",
                                 stderr=b"coderund: the program killed its supervisor\n")
            raise SandboxError(f"{e}; supervisor said: {stderr[-300:]!r}") from None


def _compile_problem(report: RunReport, limits: Limits) -> str | None:
    """None when the build succeeded, else a note for the end of the compiler's output."""
    if report.timed_out:
        return f"\ncompilation exceeded its time limit of {limits.time_ms} ms\n"
    if report.output_over:
        return "\ncompiler output exceeded its limit\n"
    if report.signal:
        return f"\ncompiler killed by signal {report.signal} (memory limit {limits.memory_mb} MB)\n"
    return "" if report.exit_code != 0 else None


def _tar(files: dict[str, bytes], modes: dict[str, int]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode = modes.get(path, 0o644)
            info.mtime = int(time.time())
            if data is FOLDER:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FOLDER = b"<folder>"  # a marker in a file map: make a folder here


def _work_files(archive: bytes, max_bytes: int) -> tuple[dict[str, bytes], dict[str, int]]:
    """What a sandboxed build left in the work folder, reduced to plain folders and regular files
    with safe relative names: links, devices and anything naming '..' are dropped, not followed."""
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    total = 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            name = os.path.normpath(member.name)
            if name == "." or name.startswith(("/", "..")) or "/../" in f"/{name}/":
                continue
            path = f"{WORKDIR}/{name}"
            if member.isdir():
                files[path], modes[path] = FOLDER, 0o755
            elif member.isfile():
                total += member.size
                if total > max_bytes:
                    raise SandboxError(f"the build left more than {max_bytes} bytes")
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[path], modes[path] = extracted.read(), 0o755 if member.mode & 0o111 else 0o644
    return files, modes
