"""Stateful sandboxes in PostgreSQL: who owns each, which worker hosts it, its state and, once it
has ended, why. State moves starting → running ⇄ paused → ended, and never back from ended."""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ..errors import RateLimited
from ..network import NetworkPolicy
from ..sandbox_requests import WORK_FOLDER, SandboxRequest
from .db import Database

COLUMNS = ("id, user_id, language, memory_mb, cpus, disk_mb, idle_timeout_s, env, metadata, state, worker_id, container_id,"
           " created_at, expires_at, ended_at, end_reason, access_token, work_folder, network")
USER_LOCK = 0x73627831  # with a user's id: one create of that user's at a time passes the cap check
LIVE = "state <> 'ended'"


@dataclass(frozen=True)
class SandboxRow:
    id: uuid.UUID
    user_id: int
    language: str
    memory_mb: int
    cpus: float
    disk_mb: int
    idle_timeout_s: int
    env: dict[str, str]
    metadata: dict[str, str]
    state: str
    worker_id: str | None
    container_id: str | None
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    access_token: str = field(default="", repr=False)  # E2B's envd calls' credential: never in a log line
    work_folder: str = WORK_FOLDER
    network: NetworkPolicy | None = None  # within the operator's widest; None: no network at all


class SandboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, user_id: int, request: SandboxRequest, cap: int) -> SandboxRow:
        """A new sandbox, waiting for a worker; RateLimited past the user's cap of live ones."""
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (USER_LOCK, user_id % 2**31))
            live = await (await conn.execute(f"SELECT count(*) AS n FROM sandboxes WHERE user_id = %s AND {LIVE}",
                                             (user_id,))).fetchone()
            if live["n"] >= cap:
                raise RateLimited(f"You have {live['n']} live sandboxes, the most you may have; delete one first.", 10)
            cursor = await conn.execute(
                "INSERT INTO sandboxes (id, user_id, language, memory_mb, cpus, disk_mb, idle_timeout_s, env, metadata,"
                " expires_at, access_token, work_folder, network) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                f" now() + make_interval(secs => %s), %s, %s, %s) RETURNING {COLUMNS}",
                (uuid.uuid4(), user_id, request.language, request.memory_mb, request.cpus, request.disk_mb,
                 request.idle_timeout_s, Jsonb(request.env), Jsonb(request.metadata), request.timeout_s,
                 secrets.token_hex(32), request.work_folder,
                 None if request.network is None else Jsonb(request.network.document())))
            return _row(await cursor.fetchone())

    async def get(self, sandbox_id: uuid.UUID) -> SandboxRow | None:
        return await self._one(f"SELECT {COLUMNS} FROM sandboxes WHERE id = %s", (sandbox_id,))

    async def of_user(self, user_id: int, metadata: dict[str, str]) -> list[SandboxRow]:
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM sandboxes WHERE user_id = %s AND {LIVE}"
                                        " AND metadata @> %s ORDER BY created_at", (user_id, Jsonb(metadata)))
            return [_row(row) for row in await cursor.fetchall()]

    async def claim(self, sandbox_id: uuid.UUID, worker_id: str) -> SandboxRow | None:
        """The sandbox for this worker to start, unless another took it or it ended meanwhile."""
        return await self._one(f"UPDATE sandboxes SET worker_id = %s WHERE id = %s AND state = 'starting'"
                               f" AND worker_id IS NULL RETURNING {COLUMNS}", (worker_id, sandbox_id))

    async def started(self, sandbox_id: uuid.UUID, container_id: str) -> bool:
        row = await self._one(f"UPDATE sandboxes SET state = 'running', container_id = %s WHERE id = %s AND {LIVE}"
                              f" RETURNING {COLUMNS}", (container_id, sandbox_id))
        return row is not None

    async def set_state(self, sandbox_id: uuid.UUID, state: str) -> None:
        """running ⇄ paused, never out of ended."""
        async with self.db.statement() as conn:
            await conn.execute(f"UPDATE sandboxes SET state = %s WHERE id = %s AND {LIVE}", (state, sandbox_id))

    async def extend(self, sandbox_id: uuid.UUID, timeout_s: int, max_lifetime_s: int,
                     only_longer: bool = False) -> SandboxRow | None:
        """Ends it timeout_s from now (with only_longer, unless it ends later already), but never later
        than max_lifetime_s after its creation."""
        end = "GREATEST(expires_at, now() + make_interval(secs => %s))" if only_longer else "now() + make_interval(secs => %s)"
        return await self._one(f"UPDATE sandboxes SET expires_at = LEAST({end},"
                               f" created_at + make_interval(secs => %s)) WHERE id = %s"
                               f" AND {LIVE} AND expires_at > now() RETURNING {COLUMNS}",
                               (timeout_s, max_lifetime_s, sandbox_id))

    async def set_network(self, sandbox_id: uuid.UUID, policy: NetworkPolicy) -> SandboxRow | None:
        """Its policy replaced, if it is live and has one (a sandbox made without a network has no way
        out to open); None otherwise."""
        return await self._one(f"UPDATE sandboxes SET network = %s WHERE id = %s AND {LIVE} AND network IS NOT NULL"
                               f" RETURNING {COLUMNS}", (Jsonb(policy.document()), sandbox_id))

    async def end(self, sandbox_id: uuid.UUID, reason: str) -> SandboxRow | None:
        """Ends it, with the reason; None if it had ended already (its first reason stays)."""
        return await self._one(f"UPDATE sandboxes SET state = 'ended', ended_at = now(), end_reason = %s"
                               f" WHERE id = %s AND {LIVE} RETURNING {COLUMNS}", (reason, sandbox_id))

    async def end_lost(self, live_workers: set[str], unplaced_s: int) -> list[uuid.UUID]:
        """Ends the sandboxes of workers that are gone, and those no worker took in time."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                "UPDATE sandboxes SET state = 'ended', ended_at = now(), end_reason = CASE WHEN worker_id IS NULL"
                " THEN 'not_placed' ELSE 'worker_lost' END"
                f" WHERE {LIVE} AND ((worker_id IS NOT NULL AND NOT worker_id = ANY(%s))"
                " OR (worker_id IS NULL AND created_at < now() - make_interval(secs => %s))) RETURNING id",
                (list(live_workers), unplaced_s))
            return [row["id"] for row in await cursor.fetchall()]

    async def rows(self, ids: list[uuid.UUID]) -> list[SandboxRow]:
        """These sandboxes as they are now (another process may have ended or extended them)."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM sandboxes WHERE id = ANY(%s)", (ids,))
            return [_row(row) for row in await cursor.fetchall()]

    async def _one(self, query: str, params: tuple[Any, ...]) -> SandboxRow | None:
        async with self.db.statement() as conn:
            row = await (await conn.execute(query, params)).fetchone()
            return _row(row) if row else None


def _row(row: dict[str, Any]) -> SandboxRow:
    network = row["network"] and NetworkPolicy(tuple(row["network"]["allow"]))
    return SandboxRow(**{**row, "network": network})
