"""Accounts in PostgreSQL."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from ..errors import Conflict
from .db import Database
from .keys import REVOKED
from .usage import QUOTA_FIELDS

COLUMNS = "id, username, password_hash, disabled_at IS NOT NULL AS disabled"


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    password_hash: str
    disabled: bool = False


@dataclass(frozen=True)
class UserListing:
    """A user as the operator's `users list` shows it: never the password's hash."""
    id: int
    username: str
    created_at: datetime
    disabled_at: datetime | None
    quotas: dict[str, int | None]


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, username: str, password_hash: str) -> UserRow:
        async with self.db.statement() as conn:
            try:
                cursor = await conn.execute(
                    f"INSERT INTO users (username, password_hash) VALUES (%s, %s) RETURNING {COLUMNS}",
                    (username, password_hash),
                )
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"The username {username!r} is taken.") from None
            return UserRow(**await cursor.fetchone())

    async def webhook_secret(self, user_id: int, new: str | None = None) -> str:
        """The user's webhook signing secret; `new` replaces it, or is set when there is none yet."""
        async with self.db.statement() as conn:
            row = await (await conn.execute(
                "UPDATE users SET webhook_secret = CASE WHEN %s OR webhook_secret IS NULL THEN %s ELSE webhook_secret END"
                " WHERE id = %s RETURNING webhook_secret", (new is not None, new or secrets.token_hex(32), user_id))).fetchone()
            return row["webhook_secret"]

    async def by_username(self, username: str) -> UserRow | None:
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                f"SELECT {COLUMNS} FROM users WHERE username = %s", (username,)
            )
            row = await cursor.fetchone()
            return UserRow(**row) if row else None

    async def is_disabled(self, user_id: int) -> bool:
        async with self.db.statement() as conn:
            row = await (await conn.execute("SELECT disabled_at IS NOT NULL AS disabled FROM users WHERE id = %s",
                                            (user_id,))).fetchone()
            return row is None or row["disabled"]

    async def set_disabled(self, username: str, disabled: bool) -> tuple[UserRow, int] | None:
        """Disables (or enables) the user; None if there is none. A disable tells every API process to
        forget the user's keys at once (the revocations' channel) and returns how many keys it was."""
        async with self.db.transaction() as conn:
            row = await (await conn.execute(
                "UPDATE users SET disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) END WHERE username = %s"
                f" RETURNING {COLUMNS}", (disabled, username))).fetchone()
            if row is None:
                return None
            keys = 0
            if disabled:
                cursor = await conn.execute("SELECT pg_notify(%s, id::text) FROM api_keys WHERE user_id = %s"
                                            " AND revoked_at IS NULL", (REVOKED, row["id"]))
                keys = cursor.rowcount
            return UserRow(**row), keys

    async def listing(self, limit: int) -> list[UserListing]:
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                "SELECT id, username, created_at, disabled_at, " + ", ".join(f"quota_{name}" for name in QUOTA_FIELDS)
                + " FROM users ORDER BY id LIMIT %s", (limit,))
            return [UserListing(row["id"], row["username"], row["created_at"], row["disabled_at"],
                                {name: row[f"quota_{name}"] for name in QUOTA_FIELDS}) for row in await cursor.fetchall()]
