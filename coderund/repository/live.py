"""Live runs' two channels in Redis Streams, one pair per task: what the program writes (worker → API)
and what the user types (API → worker).

Streams rather than pub/sub: an entry added before the other side starts reading is not lost, order is
kept, and any API process and any worker, on any host, can meet on a task's keys. The broker would need
a queue per task for the same. Keys expire an hour after their last entry.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis import asyncio as aioredis

from .sessions import answering

OUTPUT_KEY = "coderund:live:{}:out"
INPUT_KEY = "coderund:live:{}:in"
TTL_S = 3600
MAX_ENTRIES = 100_000  # per stream, trimmed approximately: output is capped long before this
START = "0-0"
STDIN, EOF = "stdin", "eof"  # input kinds
END = "end"  # the output kind that closes a run's output: its result is stored


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str  # output: compile, stdout, stderr, end; input: stdin, eof
    data: bytes


class LiveChannel:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def ping(self) -> None:
        with answering():
            await self.redis.ping()

    async def put_output(self, task_id: uuid.UUID, kind: str, data: bytes = b"") -> None:
        await self._put(OUTPUT_KEY.format(task_id), kind, data)

    async def put_input(self, task_id: uuid.UUID, kind: str, data: bytes = b"") -> None:
        await self._put(INPUT_KEY.format(task_id), kind, data)

    async def output(self, task_id: uuid.UUID, after: str, block_ms: int | None) -> list[Entry]:
        return await self._read(OUTPUT_KEY.format(task_id), after, block_ms)

    async def input(self, task_id: uuid.UUID, after: str, block_ms: int | None) -> list[Entry]:
        return await self._read(INPUT_KEY.format(task_id), after, block_ms)

    async def _put(self, key: str, kind: str, data: bytes) -> None:
        with answering():
            await (self.redis.pipeline(transaction=False)
                   .xadd(key, {"k": kind, "d": data}, maxlen=MAX_ENTRIES, approximate=True)
                   .expire(key, TTL_S).execute())

    async def _read(self, key: str, after: str, block_ms: int | None) -> list[Entry]:
        """Entries after the id `after`; with block_ms, waits up to that long for the first."""
        with answering():
            found = await self.redis.xread({key: after}, block=block_ms, count=1000)
        return [Entry(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields[b"k"].decode(), fields[b"d"])
                for _, entries in found for entry_id, fields in entries]
