"""A started sandbox container, attached: its supervisor waits on stdin for one request.

The request goes in and the report comes out over the container's attached stdin and stdout, read
on the event loop: running a task costs no Docker API call and no thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..domain import RunReport
from . import supervisor

FRAME = struct.Struct(">BxxxL")  # Docker's multiplexed stream: kind (1 stdout, 2 stderr), length
STDOUT = 1
DIAGNOSTICS_MAX = 4096  # of the supervisor's own stderr, for the log


@dataclass(frozen=True)
class Live:
    """A live step: its output handed on as the program writes it, its stdin fed as it comes."""

    output: Callable[[str, bytes], Awaitable[None]]  # ("stdout" or "stderr", bytes)
    stdin: AsyncIterator[bytes] | None = None  # None: nothing beyond the task's own stdin
    terminal: bool = False  # the program's stdin and stdout a pseudo-terminal (the supervisor's TERMINAL)


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
    max_bytes: int = 0  # of the report under way
    unread: bytearray = field(default_factory=bytearray)  # the supervisor's stdout, past the last report

    @property
    def alive(self) -> bool:
        """False once the container has ended (the engine closed the stream)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def exchange(self, request: bytes, max_bytes: int, live: Live | None = None) -> tuple[RunReport, supervisor.Files | None]:
        """Sends the one request and reads the report (send, then receive)."""
        await self.send(request)
        return await self.receive(max_bytes, live)

    async def send(self, request: bytes) -> None:
        """A request; its report comes from receive, reports in the order of their requests (a multi
        supervisor takes the next request only once it has reported on the last)."""
        try:
            self.writer.write(request)
            await self.writer.drain()
        except ConnectionError:
            # A warm container that died while it waited fails the write: the same as one that died
            # under its program, so the runner asks the engine what happened rather than crash.
            raise Died(b"") from None

    async def receive(self, max_bytes: int, live: Live | None = None) -> tuple[RunReport, supervisor.Files | None]:
        """The next report; Died if the stream ends first, or if it brings more than max_bytes (what
        the caps allow: nothing makes us hold more, however it is framed). A live request is followed
        by its stdin as it comes, and its output goes to live.output before the report."""
        out, err = self.unread, bytearray()
        self.max_bytes = max_bytes
        feeding = None
        try:
            if live:
                feeding = asyncio.ensure_future(self._feed(live.stdin))
                await self._read_live(out, err, live)
            size = await self._read(out, err)
            report = bytes(out[:size])
            del out[:size]  # what is left is the next report's start
            return supervisor.parse_report(report)
        except (supervisor.SupervisorError, ConnectionError):
            raise Died(bytes(err)) from None
        finally:
            if feeding:
                feeding.cancel()

    async def _feed(self, stdin: AsyncIterator[bytes] | None) -> None:
        with contextlib.suppress(ConnectionError):
            if stdin is not None:
                async for data in stdin:
                    self.writer.write(supervisor.input_item(data))
                    await self.writer.drain()
            self.writer.write(supervisor.INPUT_END)
            await self.writer.drain()

    async def _read_live(self, out: bytearray, err: bytearray, live: Live) -> None:
        """Hands on the output items until the empty one that ends them; the report follows in out."""
        while True:
            while (item := supervisor.take_item(out)) is not None:
                if not item:
                    return
                await live.output(supervisor.LIVE_STREAMS[item[0]], item[1:])
            if not await self.frame(out, err):
                return

    async def frame(self, out: bytearray, err: bytearray) -> bool:
        """Adds the next frame of the stream to out (the supervisor's stdout) or err; False at its end."""
        try:
            kind, size = FRAME.unpack(await self.reader.readexactly(FRAME.size))
            payload = await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        if kind == STDOUT:
            if len(out) + size > self.max_bytes:
                raise supervisor.SupervisorError(f"the report is over {self.max_bytes} bytes")
            out += payload
        else:
            err += payload[: max(0, DIAGNOSTICS_MAX - len(err))]
        return True

    async def _read(self, out: bytearray, err: bytearray) -> int:
        """Until the report is whole (its header tells its length), or the stream ends (a report
        that carries files ends with the container): how long it is in out."""
        expected: int | None = None
        while expected is None or len(out) < expected:
            if expected is None and (newline := out.find(b"\n")) >= 0:
                expected = supervisor.report_size(bytes(out[: newline + 1]))
                if expected is not None:
                    continue
            if not await self.frame(out, err):
                break
        return len(out) if expected is None else expected

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
