"""API keys: made, listed, revoked, and recognised on every request without a database round trip
once warm (a cache that every revocation empties at once, through NOTIFY)."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from ..access import (E2B_KEY_PREFIX, KEY_PREFIX, KeyRequest, Principal, check_imported, expired, key_hash, key_prefix,
                      new_key)
from ..errors import NotFound, Unavailable
from ..repository.keys import KeyRow, Keys
from ..repository.notify import TaskListener

log = logging.getLogger(__name__)
CACHE_SIZE = 10_000
KNOWN_S = 300  # a key found is trusted this long between lookups (revocations empty the cache at once)
UNKNOWN_S = 10  # a value that is no key is not looked up again for this long
TOUCH_EVERY_S = 60  # last_used_at is written at most this often per key, off the request's path


def utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKeys:
    def __init__(self, keys: Keys, revocations: TaskListener | None, clock: Callable[[], datetime] = utcnow) -> None:
        self.keys = keys
        self.clock = clock
        self._cache: OrderedDict[bytes, tuple[KeyRow | None, float]] = OrderedDict()
        self._touched: dict[uuid.UUID, float] = {}
        self._touching: set[asyncio.Task[None]] = set()
        if revocations is not None:
            revocations.subscribe(self._forget)

    async def create(self, user_id: int, request: KeyRequest, value: str | None = None) -> tuple[KeyRow, str]:
        """A new key (or the given value, imported) for the user; the only time the key is seen."""
        key = check_imported(value) if value is not None else new_key(request.form)
        row = await self.keys.add(user_id, request.name, key_hash(key), key_prefix(key), request.scopes,
                                  request.expires_in_days)
        self._cache.pop(key_hash(key), None)  # it may have been looked up, as nothing, a moment ago
        return row, key

    async def of_user(self, user_id: int) -> list[KeyRow]:
        return await self.keys.of_user(user_id)

    async def revoke(self, key_id: str, user_id: int | None = None) -> None:
        try:
            parsed = uuid.UUID(key_id)
        except ValueError:
            parsed = None
        if parsed is None or not await self.keys.revoke(parsed, user_id):
            raise NotFound(f"There is no API key {key_id!r}.")
        self._forget(parsed)

    async def principal(self, token: str) -> Principal | None:
        """Whom the key acts for, or None when it is no key (or revoked, or expired)."""
        hashed = key_hash(token)
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and now - cached[1] < (KNOWN_S if cached[0] else UNKNOWN_S):
            row = cached[0]
        else:
            row = await self.keys.by_hash(hashed)
            self._cache[hashed] = (row, now)
            self._cache.move_to_end(hashed)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if row is None or expired(row.expires_at, self.clock()):
            return None
        if now - self._touched.get(row.id, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._touched[row.id] = now
            touching = asyncio.create_task(self._touch(row.id))
            self._touching.add(touching)
            touching.add_done_callback(self._touching.discard)
        return Principal(row.user_id, frozenset(row.scopes), row.id)

    async def _touch(self, key_id: uuid.UUID) -> None:
        try:
            await self.keys.touch(key_id)
        except Unavailable as e:
            log.warning("could not note the use of key %s: %s", key_id, e.message)

    def _forget(self, key_id: uuid.UUID | None) -> None:
        """A key was revoked (None: news may have been missed): no cached answer about it stands."""
        if key_id is None:
            self._cache.clear()
            return
        for hashed in [h for h, (row, _) in self._cache.items() if row is not None and row.id == key_id]:
            del self._cache[hashed]


def looks_like_key(token: str) -> bool:
    return token.startswith((KEY_PREFIX, E2B_KEY_PREFIX))
