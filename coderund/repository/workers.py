"""Live workers in PostgreSQL: a heartbeat row each, so leftovers of dead ones can be told apart."""
from __future__ import annotations

from .db import Database


class Workers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def deployment(self) -> str:
        """This deployment's id (every process on one database shares it)."""
        async with self.db.statement() as conn:
            row = await (await conn.execute("SELECT id FROM deployment")).fetchone()
            return str(row["id"])

    async def heartbeat(self, worker: str, host: str) -> None:
        async with self.db.statement() as conn:
            await conn.execute(
                "INSERT INTO workers (id, host) VALUES (%s, %s)"
                " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
                (worker, host),
            )

    async def live_workers(self, within_s: int) -> set[str]:
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                "SELECT id FROM workers WHERE heartbeat_at > now() - make_interval(secs => %s)", (within_s,)
            )
            return {row["id"] for row in await cursor.fetchall()}

    async def forget_worker(self, worker: str) -> None:
        async with self.db.statement() as conn:
            await conn.execute("DELETE FROM workers WHERE id = %s", (worker,))
