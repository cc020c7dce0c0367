"""Webhook deliveries in PostgreSQL: written by the statement that finishes a task (tasks.py), taken by
dispatchers under a lease, so that a crash anywhere loses none and several dispatchers share them."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from .db import Database

LEASE_S = 60  # a delivery taken by a dispatcher that died is taken again after this
# In the statement that finishes a task (tasks.py), from its finished row: %(hook)s, the delivery's id.
ENQUEUE = "INSERT INTO webhook_deliveries (id, task_id, url) SELECT %(hook)s, id, callback_url"


@dataclass(frozen=True)
class PendingWebhook:
    id: uuid.UUID
    task_id: uuid.UUID
    user_id: int
    url: str
    attempts: int  # before this one
    created_at: datetime


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def take(self, limit: int) -> list[PendingWebhook]:
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                "UPDATE webhook_deliveries d SET next_at = now() + make_interval(secs => %s) FROM tasks t"
                " WHERE t.id = d.task_id AND d.id IN (SELECT id FROM webhook_deliveries WHERE delivered_at IS NULL"
                " AND gave_up_at IS NULL AND next_at <= now() ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING d.id, d.task_id, t.user_id, d.url, d.attempts, d.created_at",
                (LEASE_S, limit))
            return [PendingWebhook(**row) for row in await cursor.fetchall()]

    async def delivered(self, delivery_id: uuid.UUID) -> None:
        async with self.db.statement() as conn:
            await conn.execute("UPDATE webhook_deliveries SET delivered_at = now(), attempts = attempts + 1, last_error = NULL"
                               " WHERE id = %s", (delivery_id,))

    async def failed(self, delivery_id: uuid.UUID, error: str, retry_in_s: float | None) -> None:
        """Counts the attempt; tries again after retry_in_s, or never (None)."""
        async with self.db.statement() as conn:
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = %s,"
                " next_at = now() + make_interval(secs => %s), gave_up_at = CASE WHEN %s THEN now() END WHERE id = %s",
                (error[:500], retry_in_s or 0, retry_in_s is None, delivery_id))

    async def oldest_pending_s(self) -> float:
        async with self.db.statement() as conn:
            row = await (await conn.execute(
                "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age FROM webhook_deliveries"
                " WHERE delivered_at IS NULL AND gave_up_at IS NULL")).fetchone()
            return float(row["age"])
