"""Accounts in PostgreSQL."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import psycopg

from ..errors import Conflict
from .db import Database


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    password_hash: str


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, username: str, password_hash: str) -> UserRow:
        async with self.db.statement() as conn:
            try:
                cursor = await conn.execute(
                    "INSERT INTO users (username, password_hash) VALUES (%s, %s) RETURNING id, username, password_hash",
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
                "SELECT id, username, password_hash FROM users WHERE username = %s", (username,)
            )
            row = await cursor.fetchone()
            return UserRow(**row) if row else None
