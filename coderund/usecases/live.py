"""Live runs: a task's output read back as it is written, its stdin passed on as it comes."""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from ..domain import TaskRequest, TaskState
from ..errors import Unavailable
from ..repository.live import END, EOF, START, STDIN, LiveChannel
from ..repository.notify import TaskListener
from ..sandbox.box import Live
from .tasks import TaskService

LIVE_WAIT_MS = 1000  # a live run's reader waits this long for output before it looks at the task again
LIVE_CHECK_S = 5  # and asks the database whether the task finished this often, should a notice be lost


class LiveRuns:
    """The API side of live runs: a task submitted as live, its stdin passed on, its output read back
    as its worker writes it, through channels any API process and any worker can reach."""

    def __init__(self, tasks: TaskService, channel: LiveChannel, finished: TaskListener) -> None:
        self.tasks = tasks
        self.channel = channel
        self.finished = finished

    async def submit(self, user_id: int, request: TaskRequest, *, tty: bool = True) -> uuid.UUID:
        """A live run: by default with a terminal for the program's stdin and stdout (tty), as a
        program run by hand has, so that runtimes write lines and prompts as they come."""
        return await self.tasks.submit(user_id, request, live=True, tty=tty)

    async def send(self, task_id: uuid.UUID, data: bytes) -> None:
        await self.channel.put_input(task_id, STDIN, data)

    async def end(self, task_id: uuid.UUID) -> None:
        await self.channel.put_input(task_id, EOF)

    async def output(self, user_id: int, task_id: uuid.UUID) -> AsyncIterator[tuple[str, bytes]]:
        """(kind, bytes) as the program writes them, until the task has finished. Its worker writes
        every piece before it stores the result, and an end mark after; a task that ended with no
        worker (cancelled while queued) is told by the finished notice, or the database now and then."""
        after, quiet_s = START, 0.0
        with self.finished.watch(task_id) as finished:
            while True:
                done = finished.is_set()
                entries = await self.channel.output(task_id, after, None if done else LIVE_WAIT_MS)
                for entry in entries:
                    after = entry.id
                    if entry.kind == END:
                        return
                    yield entry.kind, entry.data
                if done and not entries:
                    return
                quiet_s = 0.0 if entries else quiet_s + LIVE_WAIT_MS / 1000
                if quiet_s >= LIVE_CHECK_S:
                    quiet_s = 0.0
                    if await self.tasks.state(user_id, str(task_id)) is TaskState.DONE:
                        finished.set()

log = logging.getLogger(__name__)


class LiveBridge:
    """The worker side of a live run: the program's output to the channel, pieces that pile up while
    one is on its way merged into one entry; the program's stdin from the channel, until eof."""

    def __init__(self, channel: LiveChannel, task_id: uuid.UUID, tty: bool) -> None:
        self.channel = channel
        self.task_id = task_id
        self.tty = tty
        self.pending: list[tuple[str, bytearray]] = []
        self.sending: asyncio.Future[None] | None = None

    def live(self) -> Live:
        return Live(self.output, self.stdin(), terminal=self.tty)

    async def output(self, kind: str, data: bytes) -> None:
        if self.pending and self.pending[-1][0] == kind:
            self.pending[-1][1].extend(data)
        else:
            self.pending.append((kind, bytearray(data)))
        if self.sending is None or self.sending.done():
            self.sending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        while self.pending:
            kind, data = self.pending.pop(0)
            try:
                await self.channel.put_output(self.task_id, kind, bytes(data))
            except Unavailable as e:  # the output is in the result all the same
                log.warning("task %s: live output lost: %s", self.task_id, e.message)

    async def flush(self) -> None:
        if self.sending is not None:
            await self.sending

    async def stdin(self) -> AsyncIterator[bytes]:
        after = START
        while True:
            try:
                entries = await self.channel.input(self.task_id, after, LIVE_WAIT_MS)
            except Unavailable as e:
                log.warning("task %s: live input lost: %s", self.task_id, e.message)
                return
            for entry in entries:
                after = entry.id
                if entry.kind == EOF:
                    return
                yield entry.data

