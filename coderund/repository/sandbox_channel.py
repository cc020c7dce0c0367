"""How API processes reach the worker that hosts a sandbox, in Redis.

A new sandbox waits in a list that the workers of one queue take from (whoever has room); calls go
to the hosting worker's own stream, and each call's events come back on a stream of its own. Streams
as live runs have them: nothing is lost while the other side is not yet reading, and any API process
on any host meets any worker on the keys. A call's reply stream is opened by its caller before the
call and forgotten when the caller is done with it: the worker's events go only to an open one, so
a caller that has gone is sent nothing more (what a call can send at all is bounded by the hub).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from .sessions import answering

PLACE_KEY = "coderund:sandboxes:{}:place"  # by queue: the workers that serve it
CALLS_KEY = "coderund:sandboxes:worker:{}"
REPLY_KEY = "coderund:sandboxes:reply:{}"
ALIVE_KEY = "coderund:sandboxes:alive:{}"  # by worker: there while it serves its sandboxes
REPLY_TTL_S = 300
CALLS_MAX = 10_000
START = "0-0"


@dataclass(frozen=True)
class Message:
    id: str
    body: dict[str, Any]
    data: bytes  # bytes beside the JSON (a file's chunk), unencoded


class SandboxChannel:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def ping(self) -> None:
        with answering():
            await self.redis.ping()

    async def alive(self, worker_id: str, ttl_s: float) -> None:
        """The worker serves its sandboxes for ttl_s more (said again well before then)."""
        with answering():
            await self.redis.set(ALIVE_KEY.format(worker_id), "1", px=int(ttl_s * 1000))

    async def is_alive(self, worker_id: str) -> bool:
        with answering():
            return bool(await self.redis.exists(ALIVE_KEY.format(worker_id)))

    async def gone(self, worker_id: str) -> None:
        with answering():
            await self.redis.delete(ALIVE_KEY.format(worker_id))

    @staticmethod
    def new_reply() -> str:
        return REPLY_KEY.format(uuid.uuid4().hex)

    async def place(self, queue: str, message: dict[str, Any]) -> None:
        with answering():
            await self.redis.lpush(PLACE_KEY.format(queue), json.dumps(message))

    async def take_placement(self, queue: str, timeout_s: float) -> dict[str, Any] | None:
        with answering():
            found = await self.redis.brpop([PLACE_KEY.format(queue)], timeout=timeout_s)
        return json.loads(found[1]) if found else None

    async def call(self, worker_id: str, message: dict[str, Any], data: bytes = b"") -> None:
        await self._put(CALLS_KEY.format(worker_id), message, data, CALLS_MAX, None)

    async def calls(self, worker_id: str, after: str, block_ms: int) -> list[Message]:
        """The worker's calls after `after`, removed as they are read (a file's chunks are large)."""
        key = CALLS_KEY.format(worker_id)
        found = await self._read(key, after, block_ms)
        if found:
            with answering():
                await self.redis.xdel(key, *(m.id for m in found))
        return found

    async def open(self, key: str) -> None:
        """A reply stream, empty, before its call."""
        with answering():
            await (self.redis.pipeline(transaction=False).xadd(key, {"o": ""}, maxlen=0, approximate=False)
                   .expire(key, REPLY_TTL_S).execute())

    async def reply(self, key: str, event: dict[str, Any], data: bytes = b"", *, opened: bool = False) -> bool:
        """Whether the event went on the stream; opened: only onto one its caller opened and still reads."""
        return await self._put(key, event, data, None, REPLY_TTL_S, only_open=opened)

    async def replies(self, key: str, after: str, block_ms: int) -> list[Message]:
        return await self._read(key, after, block_ms)

    async def forget(self, key: str) -> None:
        with answering():
            await self.redis.delete(key)

    async def _put(self, key: str, body: dict[str, Any], data: bytes, maxlen: int | None, ttl_s: int | None,
                   only_open: bool = False) -> bool:
        with answering():
            pipe = self.redis.pipeline(transaction=False).xadd(key, {"j": json.dumps(body), "d": data}, maxlen=maxlen,
                                                                approximate=True, nomkstream=only_open)
            if ttl_s:
                pipe.expire(key, ttl_s)
            added, *_ = await pipe.execute()
        return added is not None

    async def _read(self, key: str, after: str, block_ms: int) -> list[Message]:
        with answering():
            found = await self.redis.xread({key: after}, block=block_ms, count=100)
        return [Message(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, json.loads(fields[b"j"]),
                        fields.get(b"d", b""))
                for _, entries in found for entry_id, fields in entries]
