"""Migrations: the database is created, and each file applied once even when many processes race."""
from __future__ import annotations

import asyncio
import uuid

import psycopg

from coderund import config
from coderund.repository.db import MIGRATIONS_DIR, migrate, with_database
from tests.conftest import drop_database


async def test_concurrent_migrations_apply_each_file_once():
    name = f"coderund_migrate_{uuid.uuid4().hex[:8]}"
    url = with_database(config.load({}, environ={}).database_url, name)
    try:
        results = await asyncio.gather(*(migrate(url) for _ in range(10)))
        files = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
        assert sorted(sum(results, [])) == files  # every file applied by exactly one of the ten
        assert await migrate(url) == []
        async with await psycopg.AsyncConnection.connect(url) as conn:
            rows = await (await conn.execute("SELECT name FROM schema_migrations ORDER BY name")).fetchall()
        assert [r[0] for r in rows] == files
    finally:
        drop_database(url)
