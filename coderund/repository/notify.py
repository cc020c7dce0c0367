"""News of tasks pushed by PostgreSQL: a transaction NOTIFYs a task id on a channel, and a process
LISTENs on one connection of its own and wakes whoever watches that task. The worker's finishing
transaction tells API processes that a task is done; a cancel tells the workers.

A notification can be missed only while the listening connection is down; every watcher is woken
when it is back, so each re-reads its task and nothing that happened in between goes unseen.
Watchers keep their own deadlines, so a listener that is down never holds one past it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator

import psycopg

from .db import CONNECT_TIMEOUT_S

log = logging.getLogger(__name__)
FINISHED = "coderund_task_finished"
CANCEL = "coderund_task_cancel"
RECONNECT_S = (0.5, 10)  # first and longest pause before listening again


class TaskListener:
    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._waiters: dict[uuid.UUID | None, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[uuid.UUID | None], None]] = []

    def subscribe(self, fn: Callable[[uuid.UUID | None], None]) -> None:
        """fn hears every id notified, and None when the connection is back (news may have been missed)."""
        self._subscribers.append(fn)

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    @contextlib.contextmanager
    def watch(self, task_id: uuid.UUID | None) -> Iterator[asyncio.Event]:
        """An event set when there may be news of the task (None: of any task): watch first, then read
        the task, so that news between the two is not missed."""
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters[task_id]
            waiters.discard(event)
            if not waiters:
                del self._waiters[task_id]

    def _wake(self, events: set[asyncio.Event]) -> None:
        for event in events:
            event.set()

    async def _listen(self) -> None:
        pause = RECONNECT_S[0]
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                 connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    pause = RECONNECT_S[0]
                    for events in self._waiters.values():  # whatever finished while we were away
                        self._wake(events)
                    for fn in self._subscribers:
                        fn(None)
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            noted = uuid.UUID(note.payload)
                            for key in (noted, None):
                                self._wake(self._waiters.get(key, set()))
                            for fn in self._subscribers:
                                fn(noted)
            except (psycopg.Error, OSError) as e:
                log.warning("listening on %s failed (%s); again in %.1f s", self.channel, e, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_S[1])
