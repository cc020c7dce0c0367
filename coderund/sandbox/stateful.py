"""A stateful sandbox's container, attached: requests to its hub (hub.py) as JSON lines, events back.

One reader per container hands each event to the request it answers, so any number of runs,
commands and file calls share the one attached stream.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..sandbox_requests import (FILE_CHUNK, MAX_ATTACHED, MAX_COMMANDS, MAX_CONTEXTS, MAX_ENTRIES, MAX_FILE_METADATA,
                                MAX_FILE_METADATA_KEY, MAX_FILE_METADATA_VALUE, MAX_LIST_DEPTH, MAX_LISTED_METADATA,
                                MAX_OUTPUT_BYTES, MAX_RESULT_BYTES, MAX_RESULTS, MAX_STDIN_PENDING, MAX_WATCH_EVENTS,
                                MAX_WATCHED_FOLDERS, MAX_WATCHERS)
from .box import Box
from .engine import Engine, SandboxError, Shape
from .options import HUB, WORKDIR

MB = 1024 * 1024
# Of one event: the hub's longest are a run's results together (MAX_RESULT_BYTES at most) and a
# listing of MAX_ENTRIES names (each at most 255 bytes, JSON-escaped: under 16 MiB in all).
LINE_MAX = MAX_RESULT_BYTES + 24 * MB
READY_S = 30  # for the hub's answer to the first request
# gVisor's sentry runs the sandbox's threads on host threads of its own, which the pids limit counts;
# its own kernel counts the sandbox's processes, which nproc then limits. A fork bomb held at 64
# processes still took 1024 host threads in 1 run of 3 (the sentry then ends the sandbox, exit 2).
GVISOR_PIDS, GVISOR_NPROC = 4096, 64
PIDS = 256


class HubGone(SandboxError):
    """The container ended, or its hub did: the sandbox is no more."""


@dataclass(frozen=True)
class Spec:
    image: str
    memory_mb: int
    cpus: float
    disk_mb: int
    env: tuple[tuple[str, str], ...] = ()
    work_folder: str = WORKDIR
    egress: str | None = None  # as Shape.egress: a sandbox with a network policy (never a warm one)


class Hub:
    def __init__(self, box: Box) -> None:
        self.box = box
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._reading = asyncio.ensure_future(self._read())
        self.diagnostics = b""

    @classmethod
    async def start(cls, engine: Engine, spec: Spec, labels: dict[str, str]) -> Hub:
        runsc = engine.isolation.runtime == "runsc"
        shape = Shape(spec.image, spec.memory_mb, spec.env, GVISOR_PIDS if runsc else PIDS, spec.egress)
        caps = {"nproc": GVISOR_NPROC if runsc else 0, "output_bytes": MAX_OUTPUT_BYTES, "results": MAX_RESULTS,
                "result_bytes": MAX_RESULT_BYTES, "contexts": MAX_CONTEXTS, "commands": MAX_COMMANDS,
                "entries": MAX_ENTRIES, "chunk": FILE_CHUNK, "depth": MAX_LIST_DEPTH, "stdin_bytes": MAX_STDIN_PENDING,
                "attached": MAX_ATTACHED, "watchers": MAX_WATCHERS, "watch_events": MAX_WATCH_EVENTS,
                "watched": MAX_WATCHED_FOLDERS, "metadata": MAX_FILE_METADATA, "metadata_key": MAX_FILE_METADATA_KEY,
                "metadata_value": MAX_FILE_METADATA_VALUE, "listed_metadata": MAX_LISTED_METADATA}
        box = await engine.make(shape, labels, command=["/usr/bin/python3", "-I", "-S", HUB, spec.work_folder,
                                                        json.dumps(caps)],
                                cpus=spec.cpus, disk_mb=spec.disk_mb, work_folder=spec.work_folder)
        hub = cls(box)
        try:
            await asyncio.wait_for(hub.ask({"op": "ping"}), READY_S)
        except (TimeoutError, HubGone) as e:
            engine.discard(box)
            raise SandboxError(f"the sandbox's hub did not answer: {e or f'not within {READY_S} s'}"
                               f" {hub.diagnostics[-300:]!r}") from None
        return hub

    @property
    def alive(self) -> bool:
        return not self._reading.done()

    @property
    def created(self) -> float:
        return self.box.created

    async def wait_closed(self) -> None:
        await asyncio.shield(self._reading)

    async def call(self, request: dict[str, Any],
                   on_id: Callable[[str], None] | None = None) -> AsyncIterator[dict[str, Any]]:
        """The request's events, its end event last; HubGone if the sandbox ends first. on_id learns
        the request's id, by which an interrupt names it."""
        if not self.alive:
            raise HubGone("the sandbox has ended")
        rid = str(next(self._ids))
        if on_id is not None:
            on_id(rid)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._waiting[rid] = queue
        try:
            self.box.writer.write(json.dumps({**request, "id": rid}).encode() + b"\n")
            await self.box.writer.drain()
            while (event := await queue.get()) is not None:
                yield event
                if event.get("type") == "end":
                    return
            raise HubGone("the sandbox ended during the call")
        except ConnectionError:
            raise HubGone("the sandbox has ended") from None
        finally:
            del self._waiting[rid]

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """A request answered by its end event alone."""
        async for event in self.call(request):
            if event.get("type") == "end":
                return event
        raise HubGone("no answer")

    async def _read(self) -> None:
        lines, err = bytearray(), bytearray()
        self.box.max_bytes = LINE_MAX
        try:
            while await self.box.frame(lines, err):
                while (newline := lines.find(b"\n")) >= 0:
                    event = json.loads(lines[:newline])
                    del lines[:newline + 1]
                    self._route(event)
        except Exception:  # noqa: BLE001 - whatever breaks the stream ends the sandbox: said below
            pass
        finally:
            self.diagnostics = bytes(err)
            for queue in self._waiting.values():
                queue.put_nowait(None)
            self.box.close()

    def _route(self, event: dict[str, Any]) -> None:
        if (queue := self._waiting.get(str(event.get("id")))) is not None:
            queue.put_nowait(event)
