"""Files a client stores ahead of the runs that name them (Jobe's file cache), per owner in PostgreSQL:
bounded in bytes per owner, the least recently used dropped first."""
from __future__ import annotations

from .db import Database

OWNER_LOCK = 0x66696c65  # with a user's id: one writer of that user's files at a time keeps the bound
ROW_BYTES = 256  # what a file costs beside its content (its id, its row): an empty file counts too


class StoredFiles:
    def __init__(self, db: Database, *, max_bytes_per_owner: int) -> None:
        self.db = db
        self.max_bytes = max_bytes_per_owner

    async def put(self, user_id: int, file_id: str, content: bytes) -> None:
        """Stores (or replaces) the file, then drops the owner's least recently used ones past the bound."""
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (OWNER_LOCK, user_id))
            await conn.execute(
                "INSERT INTO stored_files (user_id, file_id, content, size) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (user_id, file_id) DO UPDATE SET content = excluded.content, size = excluded.size,"
                " used_at = now()", (user_id, file_id, content, len(content)))
            await conn.execute(
                "DELETE FROM stored_files WHERE user_id = %s AND file_id IN (SELECT file_id FROM"
                " (SELECT file_id, sum(size + %s) OVER (ORDER BY used_at DESC, file_id) AS total FROM stored_files"
                "  WHERE user_id = %s) AS newest_first WHERE total > %s)", (user_id, ROW_BYTES, user_id, self.max_bytes))

    async def exists(self, user_id: int, file_id: str) -> bool:
        async with self.db.statement() as conn:
            row = await (await conn.execute("SELECT 1 FROM stored_files WHERE user_id = %s AND file_id = %s",
                                            (user_id, file_id))).fetchone()
        return row is not None

    async def take(self, user_id: int, file_ids: list[str]) -> dict[str, bytes]:
        """The named files that are there (marked used); the caller tells which are missing."""
        async with self.db.statement() as conn:
            rows = await (await conn.execute(
                "UPDATE stored_files SET used_at = now() WHERE user_id = %s AND file_id = ANY(%s) RETURNING file_id, content",
                (user_id, file_ids))).fetchall()
        return {row["file_id"]: bytes(row["content"]) for row in rows}
