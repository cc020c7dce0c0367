"""The Docker side of sandboxes: make a container and attach to it, remove it, sweep leftovers.

A container's own calls go over the engine's connection on the event loop (engine_http.py); the
Docker SDK, which is synchronous, serves the rest on a thread pool of our own, so the event loop never
blocks on the engine. Every engine API call is counted in /metrics by its route.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import logging
import re
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests
import requests.exceptions
from docker.transport.unixconn import UnixHTTPAdapter
from docker.types import Mount

from .. import metrics
from .box import Box
from .engine_http import EngineCallFailed, EngineHTTP
from .options import CREATE_KEYS, LABEL, TOOLS_DIR, Isolation, container_options

log = logging.getLogger(__name__)
T = TypeVar("T")
STATEFUL_TOOLS = ("hub.py", "kernel.py", "kernel.js")  # a stateful sandbox's, beside the supervisor
_VERSION = re.compile(r"v[\d.]+")
_COLLECTIONS = {"containers", "volumes", "images", "exec"}
_ACTIONS = {"create", "json", "prune"}
# A task's result takes a few ms to be out: a used container's removal, and the warm pool's refill
# after a task, wait that long rather than slow it.
SETTLE_S = 0.05
# A removal the engine fails is tried again after these pauses: a sandbox full of processes can take
# longer to die than the engine waits for its kill (gVisor under load), and a live worker's own
# containers are never swept.
REMOVE_RETRY_S = (1.0, 3.0, 10.0)
# A fresh sandbox's start before any is measured: create, start and attach with the engine busy (make
# bench, 2 cores); then a moving average of the last few, as a slower engine takes longer.
START_S, START_AVERAGED = 0.13, 8
EXEC_STDERR_MAX = 4096  # of an exec's stderr, kept for its error


class SandboxError(Exception):
    """The platform failed (engine down, container gone); not the task's fault."""


class SandboxRefused(SandboxError):
    """The engine refused to make a container with these settings: trying again cannot help."""


class ImageMissing(SandboxRefused):
    """The image is not on the engine: the operator builds it (`coderund images build`)."""

    def __init__(self, image: str) -> None:
        super().__init__(f"the image {image} is missing")
        self.image = image


@dataclass(frozen=True)
class Shape:
    """What makes two sandbox containers interchangeable before a task is in them."""

    image: str
    memory_mb: int
    env: tuple[tuple[str, str], ...] = ()
    pids_limit: int | None = None  # None: the isolation's
    egress: str | None = None  # the host folder of the worker's egress socket for it (never a warm shape's)


def api_route(method: str, url: str) -> str:
    """An engine call as a metric label: its route, without the API version, ids or names."""
    parts = [p for p in requests.utils.urlparse(url).path.split("/") if p and not _VERSION.fullmatch(p)]
    if parts[:1] == ["images"] and len(parts) > 3:  # an image name may hold slashes
        parts = ["images", "{id}", parts[-1]]
    for i in range(1, len(parts)):
        if parts[i - 1] in _COLLECTIONS and parts[i] not in _ACTIONS:
            parts[i] = "{id}"
    return f"{method} /{'/'.join(parts)}"


class Engine:
    def __init__(self, client: docker.DockerClient, *, isolation: Isolation, supervisor_binary: Path, threads: int,
                 worker_id: str, deployment: str) -> None:
        self.client = client
        # Every container we make carries both: the sweep touches only this deployment's.
        self.labels = {LABEL: "1", f"{LABEL}.deployment": deployment, f"{LABEL}.worker": worker_id}
        self.isolation = isolation
        self.supervisor = supervisor_binary.read_bytes()
        self.worker_id = worker_id
        self.tools = {"supervise": (self.supervisor, 0o755),
                      **{name: (Path(__file__).with_name(name).read_bytes(), 0o644) for name in STATEFUL_TOOLS}}
        tools_digest = hashlib.sha256(b"".join(data for data, _ in self.tools.values())).hexdigest()[:16]
        self.tools_volume = f"coderund-tools-{tools_digest}"
        self._tools_ready = False
        self._tools_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="docker")
        self.http = http_of(client.api, threads)
        self._removals: set[asyncio.Future[None]] = set()
        self.start_s = START_S
        client.api.hooks["response"].append(_count_call)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise SandboxError(f"docker: {e}") from e

    async def container_call(self, method: str, route: str, container: str = "", **kwargs: Any) -> Any:
        try:
            return await self.http.call(method, route, container, **kwargs)
        except EngineCallFailed as e:
            raise _sandbox_error(e) from e

    async def close(self) -> None:
        if self._removals:
            await asyncio.wait(self._removals, timeout=30)
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.http.close()

    async def make(self, shape: Shape, labels: dict[str, str], **stateful: Any) -> Box:
        """A started container of that shape, attached, its supervisor waiting for a request; with
        container_options' command, cpus and disk_mb, a stateful sandbox's."""
        await self._install_tools(shape.image)
        name = f"coderund-{uuid.uuid4().hex[:12]}"
        options = container_options(image=shape.image, memory_mb=shape.memory_mb, isolation=self.isolation,
                                    env=dict(shape.env), labels={**self.labels, **labels}, pids_limit=shape.pids_limit,
                                    tools_volume=self.tools_volume, egress=shape.egress, **stateful)
        api = self.client.api
        body = api.create_container_config(host_config=api.create_host_config(
            **{k: v for k, v in options.items() if k not in CREATE_KEYS}), **{k: v for k, v in options.items() if k in CREATE_KEYS})
        started = time.monotonic()
        try:
            container_id = (await self.http.call("POST", "/containers/create", params={"name": name}, body=body))["Id"]
            await self.http.call("POST", "/containers/{id}/start", container_id)
            # Nothing is lost by attaching after the start: the supervisor is silent until it is asked.
            reader, writer = await self.http.attach(container_id)
        except EngineCallFailed as e:
            await self._remove(name)  # a half-made container must not linger
            if e.status == 404:  # the create call's only 404: "No such image"
                raise ImageMissing(shape.image) from e
            raise _sandbox_error(e) from e
        took = time.monotonic() - started
        metrics.CONTAINER_START.observe(took)
        self.start_s += (took - self.start_s) / START_AVERAGED
        return Box(container_id, reader, writer)

    async def pause(self, container: str) -> None:
        """Freezes every process of the container (the engine's pause): no CPU, memory kept."""
        await self.container_call("POST", "/containers/{id}/pause", container)

    async def unpause(self, container: str) -> None:
        await self.container_call("POST", "/containers/{id}/unpause", container)

    async def exec_stream(self, container: str, cmd: list[str], user: str,
                          stdin: AsyncIterator[bytes] | None = None, ok: tuple[int, ...] = (0,)) -> AsyncIterator[bytes]:
        """cmd run in the container as user (docker exec), its stdout as it comes; what stdin gives goes to
        its standard input, then its end. SandboxError at the end if it exits with other than ok,
        with the last of its stderr."""
        name = "POST /exec/{id}/start"
        try:
            made = await self.http.call("POST", "/containers/{id}/exec", container, body={
                "Cmd": cmd, "User": user, "AttachStdin": stdin is not None, "AttachStdout": True, "AttachStderr": True})
            reader, writer = await self.http.hijack(name, f"/exec/{made['Id']}/start", {"Detach": False, "Tty": False})
        except EngineCallFailed as e:
            raise _sandbox_error(e) from e
        feeding = asyncio.ensure_future(_feed(writer, stdin)) if stdin is not None else None
        err = bytearray()
        try:
            while True:
                try:
                    head = await reader.readexactly(8)
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        raise SandboxError("docker: an exec's stream was cut mid-frame") from None
                    break
                payload = await reader.readexactly(int.from_bytes(head[4:], "big"))
                if head[0] == 2:
                    err = (err + payload)[-EXEC_STDERR_MAX:]
                elif payload:
                    yield payload
            if feeding is not None:
                await feeding
        except (OSError, asyncio.IncompleteReadError) as e:
            raise SandboxError(f"docker: an exec's stream broke: {e}") from e
        finally:
            if feeding is not None and not feeding.done():
                feeding.cancel()
            writer.close()
        code = (await self.container_call("GET", "/exec/{id}/json", made["Id"]))["ExitCode"]
        if code not in ok:
            raise SandboxError(f"{cmd[0]} exited {code}: {err.decode(errors='replace').strip()}")

    async def cpu_ms(self, container: str) -> int:
        """The CPU time every process of the container has used so far (the engine's one-shot stats)."""
        stats = await self.container_call("GET", "/containers/{id}/stats", container,
                                          params={"stream": "false", "one-shot": "true"})
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"]) // 1_000_000

    def discard(self, box: Box) -> None:
        """Closes the box and removes its container, off the task's critical path: a moment later, as
        the removal's work (the engine's, and the SDK's in our threads) would slow the task's finish
        and answer. (Not the engine's auto_remove: it can cut the attached stream before the report's
        last bytes are through.)"""
        box.close()
        removal = asyncio.ensure_future(self._remove_later(box.id))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _remove_later(self, container: str) -> None:
        await asyncio.sleep(SETTLE_S)
        await self._remove(container)

    async def _remove(self, container: str) -> None:
        """Cleanup never raises: a container that cannot be removed after the retries is left for
        the leftover sweep, which removes a dead worker's containers."""
        for pause in (*REMOVE_RETRY_S, None):
            try:
                await self.http.call("DELETE", "/containers/{id}", container, params={"force": "1"})
                return
            except EngineCallFailed as e:
                if e.status == 404:
                    return
                if pause is None:
                    log.warning("could not remove container %s: %s", container[:12], e)
                    return
                log.info("could not remove container %s, trying again in %g s: %s", container[:12], pause, e)
            await asyncio.sleep(pause)

    async def state(self, container: str, settle_s: float = 2) -> dict[str, Any]:
        """The container's state once the engine has seen it end (it may learn of an OOM kill a
        moment after the stream closed), or as it is after settle_s."""
        deadline = time.monotonic() + settle_s
        while True:
            state = (await self.container_call("GET", "/containers/{id}/json", container))["State"]
            if not state.get("Running") or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.1)

    def owners(self) -> dict[str, str]:
        """Every container of this deployment's, and the worker that made it."""
        # The low-level list: it does not inspect each container, which may be gone in between.
        mine = f"{LABEL}.deployment={self.labels[f'{LABEL}.deployment']}"
        return {c["Id"]: c["Labels"].get(f"{LABEL}.worker", "")
                for c in self.client.api.containers(all=True, filters={"label": mine})}

    async def remove_all(self, containers: list[str]) -> None:
        await asyncio.gather(*(self._remove(container) for container in containers))

    def image_id(self, image: str) -> str:
        try:
            return self.client.api.inspect_image(image)["Id"]
        except docker.errors.ImageNotFound:
            raise ImageMissing(image) from None

    def missing_images(self, images: list[str]) -> list[str]:
        """Those of the images that the engine does not have (one listing of them all)."""
        present = {name for found in self.client.api.images() for name in (found.get("RepoTags") or [])
                   + (found.get("RepoDigests") or [])}
        return [image for image in images if image not in present and f"{image}:latest" not in present]

    async def _install_tools(self, image: str) -> None:
        """The supervisor goes into a volume once per engine and version; every sandbox mounts it
        read-only. A volume works for any image, and where the worker itself runs in a container."""
        if self._tools_ready:
            return
        async with self._tools_lock:
            if not self._tools_ready:
                await self.call(self._fill_tools_volume, image)
                self._tools_ready = True

    def _fill_tools_volume(self, image: str) -> None:
        api = self.client.api
        api.create_volume(self.tools_volume, labels={LABEL: "1"})  # returns the volume if it exists
        # A container that never starts, only to reach the volume (any image will do: the plugin's).
        try:
            helper = api.create_container(image, command=["true"], labels=self.labels,
                                          host_config=api.create_host_config(
                                              network_mode="none", mounts=[Mount(TOOLS_DIR, self.tools_volume, type="volume")]))
        except docker.errors.ImageNotFound:
            raise ImageMissing(image) from None
        try:
            if any(_archive_size(api, helper["Id"], f"{TOOLS_DIR}/{name}") != len(data)
                   for name, (data, _) in self.tools.items()):
                api.put_archive(helper["Id"], TOOLS_DIR, _tar(self.tools))
        finally:
            with contextlib.suppress(docker.errors.DockerException):  # else swept as a leftover
                api.remove_container(helper["Id"], force=True)


async def _feed(writer: asyncio.StreamWriter, chunks: AsyncIterator[bytes]) -> None:
    """An exec's standard input, then its end (a half close: its output still comes back); cut
    whole if chunks fail, so the exec's output ends too."""
    try:
        async for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
    except BaseException:
        writer.close()
        raise
    writer.write_eof()


def _sandbox_error(e: EngineCallFailed) -> SandboxError:
    """A refusal of the request itself (400) is final; anything else is the platform failing."""
    return SandboxRefused(e.explanation or str(e)) if e.status == 400 else SandboxError(f"docker: {e}")


def http_of(api: docker.APIClient, connections: int) -> EngineHTTP:
    """The SDK's engine, for our own calls: its unix socket, or a plain TCP address."""
    adapter = api.get_adapter(api.base_url)
    if isinstance(adapter, UnixHTTPAdapter):
        return EngineHTTP(socket_path=adapter.socket_path, base_url="", version=api.api_version,
                          connections=connections, timeout_s=api.timeout)
    if api.base_url.startswith("http://"):
        return EngineHTTP(socket_path=None, base_url=api.base_url, version=api.api_version,
                          connections=connections, timeout_s=api.timeout)
    raise docker.errors.DockerException(f"{api.base_url}: only a unix socket or plain TCP engine is supported"
                                        " (sandboxes' streams are not relayed over TLS or SSH)")


def _archive_size(api: Any, container: str, path: str) -> int | None:
    try:
        stream, stat = api.get_archive(container, path)
    except docker.errors.NotFound:
        return None
    for _ in stream:  # read to the end, or the connection cannot serve the next call
        pass
    return stat["size"]


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _count_call(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(Exception):
        metrics.DOCKER_CALLS.labels(api_route(response.request.method or "", response.request.url or "")).inc()
