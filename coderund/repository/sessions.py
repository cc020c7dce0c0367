"""Sessions and login-failure counters in Redis. Keys hold a token's SHA-256, never the token."""
from __future__ import annotations

import contextlib
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
LOGIN_FAILURES_KEY = "coderund:login-failures:{}"
TOKEN_BYTES = 32  # 256 bits
MAX_CONNECTIONS = 64


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

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        with answering():
            await self.redis.ping()

    async def create(self, user_id: int) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with answering():
            await self.redis.set(SESSION_KEY.format(token_digest(token)), str(user_id), ex=self.ttl)
        return token

    async def user_id(self, token: str) -> int | None:
        with answering():
            value = await self.redis.get(SESSION_KEY.format(token_digest(token)))
        return int(value) if value is not None else None

    async def delete(self, token: str) -> bool:
        with answering():
            return bool(await self.redis.delete(SESSION_KEY.format(token_digest(token))))

    async def login_failures(self, username: str) -> tuple[int, int]:
        """How many recent failures the username has, and seconds until the count expires."""
        key = LOGIN_FAILURES_KEY.format(username)
        with answering():
            count, ttl = await self.redis.pipeline().get(key).ttl(key).execute()
        return int(count or 0), max(int(ttl), 1)

    async def add_login_failure(self, username: str, window: int) -> None:
        key = LOGIN_FAILURES_KEY.format(username)
        with answering():
            # NX: the window starts at the first failure and is not stretched by later ones.
            await self.redis.pipeline().incr(key).expire(key, window, nx=True).execute()
