"""Rates as token buckets in Redis, shared by every API process: submissions per user, password
hashes (logins, registrations) per client address."""
from __future__ import annotations

import math

from redis import asyncio as aioredis

from .sessions import answering

RATE_KEY = "coderund:{}:{}"  # kind, whose
# One bucket of `rate` tokens that refills at `rate` a minute; the server's clock, so that API
# processes on several hosts agree. Returns 0 when a token was taken, else ms until there is one.
TAKE = """
local rate = tonumber(ARGV[1])
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or rate
local at = tonumber(bucket[2]) or now
tokens = math.min(rate, tokens + (now - at) * rate / 60000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 60000 / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return wait
"""


class Rates:
    def __init__(self, redis: aioredis.Redis, per_minute: int, kind: str = "submissions") -> None:
        self.per_minute = per_minute
        self.kind = kind
        self._take = redis.register_script(TAKE)

    async def take(self, whose: int | str, per_minute: int | None = None) -> int:
        """0 when whose may go on now, else the seconds until they may (0 per minute: no limit);
        per_minute, when given, is whose own rate instead of the default."""
        rate = self.per_minute if per_minute is None else per_minute
        if rate <= 0:
            return 0
        with answering():
            wait_ms = int(await self._take(keys=[RATE_KEY.format(self.kind, whose)], args=[rate]))
        return math.ceil(wait_ms / 1000)
