"""Stateful sandboxes in PostgreSQL: who owns each, which worker hosts it, its state and, once it
has ended, why. State moves starting → running ⇄ paused → ended, and never back from ended.

A paused sandbox with no worker is stored: its files are in sandbox_state (chunks of a tar, written
and read streamed), and the next call places it again (paused → starting) on whichever worker takes
it. A stored sandbox's state outlives any worker; it is deleted when the sandbox ends (a trigger)."""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import AsyncIterator
from typing import Any

from psycopg.types.json import Jsonb

from ..errors import RateLimited
from ..network import NetworkPolicy
from ..sandbox_requests import WORK_FOLDER, SandboxRequest
from .db import Database

COLUMNS = ("id, user_id, language, memory_mb, cpus, disk_mb, idle_timeout_s, env, metadata, state, worker_id, container_id,"
           " created_at, expires_at, ended_at, end_reason, access_token, work_folder, network, state_generation, state_bytes, restored")
USER_LOCK = 0x73627831  # with a user's id: one create of that user's at a time passes the cap check
MB = 1024 * 1024
LIVE = "state <> 'ended'"
STORED = "state = 'paused' AND worker_id IS NULL"
# A lost worker's sandbox: back to its last persisted point where it has one, else ended.
LOST = ("state = CASE WHEN state_generation > 0 THEN 'paused' ELSE 'ended' END,"
        " ended_at = CASE WHEN state_generation > 0 THEN NULL ELSE now() END,"
        " end_reason = CASE WHEN state_generation > 0 THEN NULL ELSE 'worker_lost' END,"
        " worker_id = NULL, container_id = NULL, restored = NULL")


class StateTooLarge(Exception):
    """A save past the sandbox's or its owner's bound: nothing of it is kept."""


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
    state_generation: int = 0  # its persisted files' (0: none)
    state_bytes: int = 0
    restored: str | None = None  # "files" once it came back from its persisted state in a new container

    @property
    def stored(self) -> bool:
        return self.state == "paused" and self.worker_id is None


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

    async def started(self, sandbox_id: uuid.UUID, container_id: str, restored: str | None = None) -> bool:
        row = await self._one(f"UPDATE sandboxes SET state = 'running', container_id = %s,"
                              f" restored = COALESCE(%s, restored) WHERE id = %s AND {LIVE}"
                              f" RETURNING {COLUMNS}", (container_id, restored, sandbox_id))
        return row is not None

    async def wake(self, sandbox_id: uuid.UUID) -> bool:
        """A stored sandbox made ready to place again: True for the one caller that did it."""
        row = await self._one(f"UPDATE sandboxes SET state = 'starting', placed_at = now() WHERE id = %s AND {STORED}"
                              f" AND expires_at > now() RETURNING {COLUMNS}", (sandbox_id,))
        return row is not None

    async def unwake(self, sandbox_id: uuid.UUID) -> None:
        """A wake no worker took up: stored again, as it was."""
        async with self.db.statement() as conn:
            await conn.execute("UPDATE sandboxes SET state = 'paused', worker_id = NULL, container_id = NULL"
                               " WHERE id = %s AND state = 'starting' AND state_generation > 0", (sandbox_id,))

    async def release(self, sandbox_id: uuid.UUID, worker_id: str) -> bool:
        """Its worker let go of it once its state was persisted: stored."""
        row = await self._one(f"UPDATE sandboxes SET state = 'paused', worker_id = NULL, container_id = NULL"
                              f" WHERE id = %s AND worker_id = %s AND {LIVE} AND state_generation > 0"
                              f" RETURNING {COLUMNS}", (sandbox_id, worker_id))
        return row is not None

    async def lost(self, sandbox_id: uuid.UUID, worker_id: str) -> SandboxRow | None:
        """Its worker is gone: back to its last persisted point, or ended with worker_lost."""
        return await self._one(f"UPDATE sandboxes SET {LOST} WHERE id = %s AND worker_id = %s AND {LIVE}"
                               f" RETURNING {COLUMNS}", (sandbox_id, worker_id))

    async def save_state(self, sandbox_id: uuid.UUID, chunks: AsyncIterator[bytes], *, max_bytes: int,
                         user_max_bytes: int) -> int:
        """The tar that chunks give, as the sandbox's next generation, swapped in at its end in one
        transaction; StateTooLarge past the sandbox's bound or its owner's (all their live sandboxes'
        states together), and nothing kept. Its size."""
        async with self.db.transaction() as conn:
            row = await (await conn.execute(f"SELECT user_id, state_generation FROM sandboxes WHERE id = %s AND {LIVE}",
                                            (sandbox_id,))).fetchone()
            if row is None:
                raise StateTooLarge("the sandbox has ended")
            generation, size, seq = row["state_generation"] + 1, 0, 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise StateTooLarge(f"its files are over the bound of {max_bytes // MB} MiB a sandbox's state may take")
                await conn.execute("INSERT INTO sandbox_state (sandbox_id, generation, seq, data) VALUES (%s, %s, %s, %s)",
                                   (sandbox_id, generation, seq, chunk))
                seq += 1
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (USER_LOCK, row["user_id"] % 2**31))
            others = await (await conn.execute(
                f"SELECT COALESCE(sum(state_bytes), 0) AS n FROM sandboxes WHERE user_id = %s AND {LIVE} AND id <> %s",
                (row["user_id"], sandbox_id))).fetchone()
            if others["n"] + size > user_max_bytes:
                raise StateTooLarge(f"its owner's sandboxes' states would be over their bound of {user_max_bytes // MB} MiB")
            swapped = await conn.execute(
                f"UPDATE sandboxes SET state_generation = %s, state_bytes = %s, state_at = now() WHERE id = %s AND {LIVE}"
                " AND state_generation = %s", (generation, size, sandbox_id, generation - 1))
            if swapped.rowcount != 1:
                raise StateTooLarge("the sandbox ended, or was saved elsewhere, meanwhile")
            await conn.execute("DELETE FROM sandbox_state WHERE sandbox_id = %s AND generation <> %s", (sandbox_id, generation))
            return size

    async def load_state(self, sandbox_id: uuid.UUID, generation: int) -> AsyncIterator[bytes]:
        """The sandbox's own persisted tar, a chunk at a time."""
        seq = 0
        while True:
            async with self.db.statement() as conn:
                found = await (await conn.execute(
                    "SELECT data FROM sandbox_state WHERE sandbox_id = %s AND generation = %s AND seq = %s",
                    (sandbox_id, generation, seq))).fetchone()
            if found is None:
                return
            yield bytes(found["data"])
            seq += 1

    async def copy_state(self, source: uuid.UUID, target: uuid.UUID) -> bool:
        """The source's persisted state as the target's first (a fork), copied inside PostgreSQL."""
        async with self.db.transaction() as conn:
            row = await (await conn.execute(f"SELECT state_generation, state_bytes FROM sandboxes WHERE id = %s AND {LIVE}",
                                            (source,))).fetchone()
            if row is None or row["state_generation"] == 0:
                return False
            await conn.execute("INSERT INTO sandbox_state (sandbox_id, generation, seq, data) SELECT %s, 1, seq, data"
                               " FROM sandbox_state WHERE sandbox_id = %s AND generation = %s",
                               (target, source, row["state_generation"]))
            await conn.execute("UPDATE sandboxes SET state_generation = 1, state_bytes = %s, state_at = now() WHERE id = %s",
                               (row["state_bytes"], target))
            return True

    async def state_bytes(self, user_id: int) -> int:
        """What the user's live sandboxes' persisted states take together."""
        async with self.db.statement() as conn:
            found = await (await conn.execute(f"SELECT COALESCE(sum(state_bytes), 0) AS n FROM sandboxes"
                                              f" WHERE user_id = %s AND {LIVE}", (user_id,))).fetchone()
            return int(found["n"])

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

    async def end_lost(self, live_workers: set[str], unplaced_s: int) -> list[SandboxRow]:
        """The sandboxes of workers that are gone, back to their last persisted point or ended; and
        those no worker took in time (stored again, if they were, else ended)."""
        async with self.db.statement() as conn:
            lost = await (await conn.execute(
                f"UPDATE sandboxes SET {LOST} WHERE {LIVE} AND worker_id IS NOT NULL AND NOT worker_id = ANY(%s)"
                f" RETURNING {COLUMNS}", (list(live_workers),))).fetchall()
            unplaced = await (await conn.execute(
                "UPDATE sandboxes SET state = CASE WHEN state_generation > 0 THEN 'paused' ELSE 'ended' END,"
                " ended_at = CASE WHEN state_generation > 0 THEN NULL ELSE now() END,"
                " end_reason = CASE WHEN state_generation > 0 THEN NULL ELSE 'not_placed' END"
                " WHERE state = 'starting' AND worker_id IS NULL AND placed_at < now() - make_interval(secs => %s)"
                f" RETURNING {COLUMNS}", (unplaced_s,))).fetchall()
            return [_row(row) for row in (*lost, *unplaced)]

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
