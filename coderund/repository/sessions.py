"""Sessions and login-failure counters in Redis. Keys hold a token's SHA-256, never the token.

Each API process remembers the sessions it has seen for a few seconds (an authenticated request then
asks Redis nothing), but only while it hears of every logout: a logout deletes the session and
announces it on a channel every process listens to; a process that is not listening trusts nothing
it remembers.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
import hashlib
import logging
import secrets
from collections.abc import Iterator

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import Unavailable

log = logging.getLogger(__name__)
SESSION_KEY = "coderund:session:{}"
LOGIN_FAILURES_KEY = "coderund:login-failures:{}:{}"  # username, client network
# A user's session digests, so an operator's disable ends them all. A logout leaves its digest here
# (it does not know the user): the set is bounded by the logins of one session lifetime, and goes with it.
USER_SESSIONS_KEY = "coderund:user-sessions:{}"
ENDED_CHANNEL = "coderund:session-ended"  # a logout's token digest, to every API process
TOKEN_BYTES = 32  # 256 bits
MAX_CONNECTIONS = 64
REMEMBER_S = 10  # how long a process trusts a session it has seen (never past the session's own expiry)
REMEMBERED = 10000
RELISTEN_S = 1


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@contextlib.contextmanager
def answering() -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as e:
        log.warning("Redis: %s", e)
        raise Unavailable("Redis is not answering; try again shortly.") from e


def connect(url: str) -> aioredis.Redis:
    # A burst of requests waits for a free connection instead of failing with "too many";
    # one quick retry on a fresh connection: after a Redis restart the pooled ones are dead.
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=5, socket_timeout=5, socket_connect_timeout=5,
        health_check_interval=30, retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError, RedisTimeoutError],
    ))


class Sessions:
    def __init__(self, url: str, *, ttl: int) -> None:
        self.redis = connect(url)
        self.ttl = ttl
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()  # digest: (user id, trusted until)
        self._listening = False
        self._ended = 0  # logouts heard: an answer read from Redis across one is not remembered

    async def close(self) -> None:
        await self.redis.aclose()

    async def listen(self) -> None:
        """Hears of every logout until cancelled, forgetting those sessions; while it cannot, the
        process remembers none."""
        while True:
            try:
                async with self.redis.pubsub() as channel:
                    await channel.subscribe(ENDED_CHANNEL)
                    self._listening = True
                    async for message in channel.listen():
                        if message["type"] == "message":
                            self._ended += 1
                            self._seen.pop(message["data"].decode(), None)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                log.warning("Redis: not hearing of logouts (%s); asking Redis for every session", e)
            finally:
                self._listening = False
                self._seen.clear()
            await asyncio.sleep(RELISTEN_S)

    async def ping(self) -> None:
        with answering():
            await self.redis.ping()

    async def create(self, user_id: int) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest, user_sessions = token_digest(token), USER_SESSIONS_KEY.format(user_id)
        with answering():
            await (self.redis.pipeline().set(SESSION_KEY.format(digest), str(user_id), ex=self.ttl)
                   .sadd(user_sessions, digest).expire(user_sessions, self.ttl).execute())
        return token

    async def user_id(self, token: str) -> int | None:
        digest = token_digest(token)
        now = time.monotonic()
        seen = self._seen.get(digest)
        if seen is not None and self._listening and now < seen[1]:
            return seen[0]
        ended = self._ended
        with answering():
            value, left_ms = await self.redis.pipeline().get(SESSION_KEY.format(digest)).pttl(SESSION_KEY.format(digest)).execute()
        if value is None:
            return None
        if self._listening and ended == self._ended:
            self._seen[digest] = (int(value), now + min(REMEMBER_S, max(left_ms, 0) / 1000))
            self._seen.move_to_end(digest)
            if len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
        return int(value)

    async def delete(self, token: str) -> bool:
        digest = token_digest(token)
        self._seen.pop(digest, None)
        with answering():
            deleted, _ = await self.redis.pipeline().delete(SESSION_KEY.format(digest)).publish(ENDED_CHANNEL, digest).execute()
        return bool(deleted)

    async def end_all(self, user_id: int) -> int:
        """Ends every session of the user at once, in every API process; returns how many were live."""
        user_sessions = USER_SESSIONS_KEY.format(user_id)
        with answering():
            digests = [digest.decode() for digest in await self.redis.smembers(user_sessions)]
            if not digests:
                return 0
            pipeline = self.redis.pipeline().delete(*(SESSION_KEY.format(digest) for digest in digests))
            for digest in digests:
                self._seen.pop(digest, None)
                pipeline.publish(ENDED_CHANNEL, digest)
            ended, *_ = await pipeline.delete(user_sessions).execute()
        return int(ended)

    async def login_failures(self, username: str, client: str) -> tuple[int, int]:
        """How many recent failures the username has from the client, and seconds until the count expires."""
        key = LOGIN_FAILURES_KEY.format(username, client)
        with answering():
            count, ttl = await self.redis.pipeline().get(key).ttl(key).execute()
        return int(count or 0), max(int(ttl), 1)

    async def add_login_failure(self, username: str, client: str, window: int) -> None:
        key = LOGIN_FAILURES_KEY.format(username, client)
        with answering():
            # NX: the window starts at the first failure and is not stretched by later ones.
            await self.redis.pipeline().incr(key).expire(key, window, nx=True).execute()
