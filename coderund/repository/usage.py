"""What each user spent (summed per UTC day and language as tasks finish) and the quotas set on them."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from .db import Database

QUOTA_FIELDS = ("cpu_s_per_day", "max_pending", "per_minute")


@dataclass(frozen=True)
class Quota:
    """A user's own quotas; None: the server's default."""

    cpu_s_per_day: int | None = None
    max_pending: int | None = None
    per_minute: int | None = None


class Usage:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def quota(self, user_id: int, day: date) -> tuple[Quota, int]:
        """The user's quotas and the CPU ms their tasks used that day: one query, on every submission."""
        async with self.db.statement() as conn:
            row = await (await conn.execute(
                "SELECT quota_cpu_s_per_day, quota_max_pending, quota_per_minute, (SELECT coalesce(sum(cpu_ms), 0)"
                " FROM usage_daily WHERE user_id = users.id AND day = %s) AS used FROM users WHERE id = %s",
                (day, user_id))).fetchone()
        if row is None:
            return Quota(), 0
        return Quota(*(row[f"quota_{name}"] for name in QUOTA_FIELDS)), int(row["used"])

    async def set_quota(self, username: str, changes: dict[str, int | None]) -> bool:
        """Sets the named quotas of the user (None: back to the default); False if there is no such user."""
        sets = ", ".join(f"quota_{name} = %s" for name in changes if name in QUOTA_FIELDS)
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"UPDATE users SET {sets or 'id = id'} WHERE username = %s",
                                        (*(changes[n] for n in changes if n in QUOTA_FIELDS), username))
            return cursor.rowcount == 1

    async def add(self, user_id: int, language: str, cpu_ms: int, wall_ms: int) -> None:
        """CPU and wall time spent outside a task (a stateful sandbox's), counted in today's usage."""
        async with self.db.statement() as conn:
            await conn.execute(
                "INSERT INTO usage_daily (user_id, day, language, cpu_ms, wall_ms)"
                " VALUES (%s, (now() AT TIME ZONE 'UTC')::date, %s, %s, %s) ON CONFLICT (user_id, day, language)"
                " DO UPDATE SET cpu_ms = usage_daily.cpu_ms + EXCLUDED.cpu_ms, wall_ms = usage_daily.wall_ms + EXCLUDED.wall_ms",
                (user_id, language, cpu_ms, wall_ms))

    async def days(self, user_id: int, since: date) -> list[dict[str, Any]]:
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                "SELECT day, language, tasks, cpu_ms, wall_ms FROM usage_daily WHERE user_id = %s AND day >= %s"
                " ORDER BY day, language", (user_id, since))
            return list(await cursor.fetchall())
