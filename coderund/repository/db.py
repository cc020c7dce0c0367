"""PostgreSQL: the connection pool, database creation and migrations."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..config import shipped
from ..errors import Unavailable

log = logging.getLogger(__name__)
MIGRATIONS_DIR = shipped("sql")
MIGRATION_LOCK = 0x636F6465  # any constant shared by every coderund process
CONNECT_TIMEOUT_S = 5


class Database:
    def __init__(self, url: str, *, max_size: int = 10) -> None:
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT_S,
            open=False,
            # Autocommit: a single statement is its own transaction, without a BEGIN and a COMMIT
            # of two round trips more (transaction() makes them where several statements are one).
            kwargs={"row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True},
            check=AsyncConnectionPool.check_connection,  # a restarted server's dead connections are replaced
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection whose statements are one transaction, committed at the end."""
        async with self.statement() as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def statement(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection for one statement, its own transaction (with CTEs, one may do several things)."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            log.warning("PostgreSQL: %s", e)
            raise Unavailable("The database is not answering; try again shortly.") from e

    async def ping(self) -> None:
        async with self.statement() as conn:
            await conn.execute("SELECT 1")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(url: str) -> None:
    """Creates the database named in the URL when it is missing."""
    name = urlsplit(url).path.lstrip("/")
    if not name:
        return
    async with await psycopg.AsyncConnection.connect(
        with_database(url, "postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
    ) as conn:
        found = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
        if found:
            return
        try:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("created database %s", name)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            pass  # another process won the race (PostgreSQL reports it either way)


async def migrate(url: str, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies each sql/NNNN_*.sql file once, in order, under an advisory lock."""
    await create_database(url)
    applied = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in await (await conn.execute("SELECT name FROM schema_migrations")).fetchall()}
            for path in sorted(folder.glob("*.sql")):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                applied.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied
