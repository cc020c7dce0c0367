"""Which tasks have finished, pushed by PostgreSQL: the worker's finishing transaction NOTIFYs, the API
LISTENs on one connection of its own and wakes whoever waits for that task.

A notification can be missed only while the listening connection is down; every waiter is woken
when it is back, so each re-reads its task and nothing finished in between goes unseen. Waiters keep
their own deadlines, so a listener that is down never holds one past it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator

import psycopg

from .db import CONNECT_TIMEOUT_S

log = logging.getLogger(__name__)
CHANNEL = "coderund_task_finished"
RECONNECT_S = (0.5, 10)  # first and longest pause before listening again


class FinishedTasks:
    def __init__(self, url: str) -> None:
        self.url = url
        self.listening = asyncio.Event()
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    @contextlib.contextmanager
    def watch(self, task_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set when the task may have finished: watch first, then read the task, so that
        a finish between the two is not missed."""
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
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    pause = RECONNECT_S[0]
                    for events in self._waiters.values():  # whatever finished while we were away
                        self._wake(events)
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            self._wake(self._waiters.get(uuid.UUID(note.payload), set()))
            except (psycopg.Error, OSError) as e:
                log.warning("listening for finished tasks failed (%s); again in %.1f s", e, pause)
            self.listening.clear()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_S[1])
