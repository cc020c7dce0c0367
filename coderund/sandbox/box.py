"""A started sandbox container, attached: its supervisor waits on stdin for one request.

The request goes in and the report comes out over the container's attached stdin and stdout, read
on the event loop: running a task costs no Docker API call and no thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

from ..domain import RunReport
from . import supervisor

FRAME = struct.Struct(">BxxxL")  # Docker's multiplexed stream: kind (1 stdout, 2 stderr), length
STDOUT = 1
DIAGNOSTICS_MAX = 4096  # of the supervisor's own stderr, for the log


class Died(Exception):
    """The container's stream ended before a whole report: it died, or its supervisor did."""

    def __init__(self, stderr: bytes) -> None:
        super().__init__(stderr[-300:].decode(errors="replace"))
        self.stderr = stderr


@dataclass(eq=False)
class Box:
    id: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    created: float = field(default_factory=time.monotonic)

    @classmethod
    async def attach(cls, container_id: str, sock: socket.socket) -> Box:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(container_id, reader, writer)

    @property
    def alive(self) -> bool:
        """False once the container has ended (the engine closed the stream)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def exchange(self, request: bytes) -> tuple[RunReport, supervisor.Files | None]:
        """Sends the one request and reads the report; Died if the stream ends first."""
        out, err = bytearray(), bytearray()
        try:
            self.writer.write(request)
            await self.writer.drain()
            await self._read(out, err)
            return supervisor.parse_report(bytes(out))
        except (supervisor.SupervisorError, ConnectionError):
            # A warm container that died while it waited fails the write: the same as one that died
            # under its program, so the runner asks the engine what happened rather than crash.
            raise Died(bytes(err)) from None

    async def _read(self, out: bytearray, err: bytearray) -> None:
        """Until the report is whole (its header tells its length), or the stream ends: a report
        that carries files ends with the container."""
        expected: int | None = None
        header_done = False
        while expected is None or len(out) < expected:
            try:
                kind, size = FRAME.unpack(await self.reader.readexactly(FRAME.size))
                payload = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if kind != STDOUT:
                err += payload[: max(0, DIAGNOSTICS_MAX - len(err))]
                continue
            out += payload
            if not header_done and (newline := out.find(b"\n")) >= 0:
                header_done = True
                expected = supervisor.report_size(bytes(out[: newline + 1]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
