"""API keys in PostgreSQL, kept as hashes only; a revocation is NOTIFYd to every API process."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from ..errors import Conflict
from .db import Database

REVOKED = "coderund_key_revoked"
COLUMNS = "id, user_id, name, prefix, scopes, created_at, last_used_at, expires_at"


@dataclass(frozen=True)
class KeyRow:
    id: uuid.UUID
    user_id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


def _row(row: dict) -> KeyRow:
    return KeyRow(**{**row, "scopes": tuple(row["scopes"])})


class Keys:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, user_id: int, name: str, key_hash: bytes, prefix: str, scopes: tuple[str, ...],
                  expires_in_days: int | None) -> KeyRow:
        async with self.db.statement() as conn:
            try:
                cursor = await conn.execute(
                    "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, scopes, expires_at) VALUES (%s, %s, %s, %s,"
                    " %s, %s, CASE WHEN %s::int IS NULL THEN NULL ELSE now() + make_interval(days => %s::int) END)"
                    f" RETURNING {COLUMNS}",
                    (uuid.uuid4(), user_id, name, prefix, key_hash, list(scopes), expires_in_days, expires_in_days))
            except psycopg.errors.UniqueViolation:
                raise Conflict("That key is registered already.") from None
            return _row(await cursor.fetchone())

    async def by_hash(self, key_hash: bytes) -> KeyRow | None:
        """The key, unless revoked or its user disabled (expiry is the caller's to judge: a cached key
        expires too)."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL"
                                        " AND user_id IN (SELECT id FROM users WHERE disabled_at IS NULL)", (key_hash,))
            row = await cursor.fetchone()
            return _row(row) if row else None

    async def of_user(self, user_id: int) -> list[KeyRow]:
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM api_keys WHERE user_id = %s AND revoked_at IS NULL"
                                        " ORDER BY created_at, id", (user_id,))
            return [_row(row) for row in await cursor.fetchall()]

    async def revoke(self, key_id: uuid.UUID, user_id: int | None = None) -> bool:
        """Revokes the key (of that user's, when given); every API process hears of it at once."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND (%s::bigint IS NULL OR user_id = %s)"
                " AND revoked_at IS NULL", (key_id, user_id, user_id))
            if cursor.rowcount != 1:
                return False
            await conn.execute("SELECT pg_notify(%s, %s)", (REVOKED, str(key_id)))
            return True

    async def touch(self, key_id: uuid.UUID) -> None:
        async with self.db.statement() as conn:
            await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (key_id,))
