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
        """prepare → (compile) → run → cleanup. A failing program is a result; a failing platform raises."""
        first_memory = max(limits.memory_mb, plugin.compile_limits.memory_mb) if plugin.compile else limits.memory_mb
        async with self.container(plugin, first_memory, name=name, labels=labels) as box:
            await box.upload({f"{WORKDIR}/{plugin.source_file}": code.encode(), STDIN_PATH: stdin.encode()})
            compile_output = b""
            if plugin.compile:
                report = await box.run(plugin.compile, plugin.compile_limits.time_ms)
                metrics.COMPILE_TIME.labels(plugin.name).observe(report.wall_ms / 1000)
                compile_output = report.stdout + report.stderr
                problem = _compile_problem(report, plugin.compile_limits)
                if problem is not None:
                    return Result(Verdict.COMPILE_ERROR, exit_code=report.exit_code, signal=report.signal,
                                  compile_output=compile_output + problem.encode(), wall_ms=report.wall_ms)
                if first_memory != limits.memory_mb:
                    await box.set_memory(limits.memory_mb)
            report = await box.run((*plugin.run, *args), limits.time_ms, stdin_path=STDIN_PATH)
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
        for container in self.client.containers.list(all=True, filters={"label": LABEL}):
            if not is_alive(container.labels.get(f"{LABEL}.worker", "")):
                self._remove(container.id)
                removed += 1
        return removed


class Box:
    """One prepared container: files go in, programs run, reports come out."""

    def __init__(self, sandbox: Sandbox, container_id: str) -> None:
        self.sandbox = sandbox
        self.id = container_id

    async def upload(self, files: dict[str, bytes]) -> None:
        files = {SUPERVISOR_PATH: self.sandbox.supervisor, **files}
        await self.sandbox.call(self._upload, _tar(files))

    def _upload(self, archive: bytes) -> None:
        # Through tar's stdin: the engine cannot copy into a tmpfs behind a read-only root.
        api = self.sandbox.client.api
        exec_id = api.exec_create(self.id, ["tar", "-x", "-C", "/", "-f", "-"], stdin=True, user="0:0")["Id"]
        stream = api.exec_start(exec_id, socket=True)
        raw = getattr(stream, "_sock", stream)
        try:
            raw.sendall(archive)
            raw.shutdown(socket.SHUT_WR)
            output = b"".join(iter(lambda: raw.recv(65536), b""))
        finally:
            raw.close()
        if api.exec_inspect(exec_id)["ExitCode"] != 0:
            raise SandboxError(f"upload into the container failed: {output[-300:]!r}")

    async def run(self, program: tuple[str, ...], wall_ms: int, *, stdin_path: str | None = None) -> RunReport:
        command = supervisor.command(SUPERVISOR_PATH, wall_ms, self.sandbox.output_limit, stdin_path, program)
        try:
            return await asyncio.wait_for(self.sandbox.call(self._run, command), wall_ms / 1000 + GRACE_S)
        except TimeoutError:
            raise SandboxError(f"the engine did not finish a {wall_ms} ms step in time") from None

    def _run(self, command: list[str]) -> RunReport:
        api = self.sandbox.client.api
        exec_id = api.exec_create(self.id, command, user=SANDBOX_USER, workdir=WORKDIR)["Id"]
        stdout, stderr = api.exec_start(exec_id, demux=True)
        try:
            return supervisor.parse_report(stdout or b"")
        except supervisor.SupervisorError as e:
            raise SandboxError(f"{e}; supervisor said: {(stderr or b'')[-300:]!r}") from None

    async def set_memory(self, memory_mb: int) -> None:
        limit = memory_mb * 1024 * 1024
        await self.sandbox.call(self.sandbox.client.api.update_container, self.id, mem_limit=limit, memswap_limit=limit)


def _compile_problem(report: RunReport, limits: Limits) -> str | None:
    """None when the build succeeded, else a note for the end of the compiler's output."""
    if report.timed_out:
        return f"\ncompilation exceeded its time limit of {limits.time_ms} ms\n"
    if report.output_over:
        return "\ncompiler output exceeded its limit\n"
    if report.signal:
        return f"\ncompiler killed by signal {report.signal} (memory limit {limits.memory_mb} MB)\n"
    return "" if report.exit_code != 0 else None


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755 if path == SUPERVISOR_PATH else 0o644
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
