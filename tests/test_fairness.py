"""Fairness between users in the queue: a delivery claims the fairest waiting task of its queue, not
the one its message names (real PostgreSQL; the last test through a real coderund)."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from coderund.repository.db import Database, migrate
from coderund.repository.tasks import Tasks
from tests.conftest import RUN_ID, own_server

QUEUE = "fair"


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    """A database of the test's own: no worker of another test claims or sweeps its tasks."""
    url = f"postgresql://postgres@127.0.0.1:5432/coderund_test_{RUN_ID}_fair"
    await migrate(url)
    database = Database(url)
    await database.open()
    yield database
    await database.close()
    async with await psycopg.AsyncConnection.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "coderund_test_{RUN_ID}_fair" WITH (FORCE)')


async def add(db: Database, user: int, state: str, age_s: int, queue: str | None = QUEUE, confirmed: bool = True) -> uuid.UUID:
    """A task of the user's, created age_s ago (and its message confirmed by the broker)."""
    task_id = uuid.uuid4()
    async with db.statement() as conn:
        await conn.execute("INSERT INTO users (id, username, password_hash) VALUES (%s, %s, 'x') ON CONFLICT DO NOTHING",
                           (user, f"user{user}"))
        await conn.execute("INSERT INTO tasks (id, user_id, language, code, time_ms, memory_mb, state, queue, created_at,"
                           " published_at) VALUES (%s, %s, 'python', 'print(1)', 1000, 64, %s, %s,"
                           " now() - make_interval(secs => %s), CASE WHEN %s THEN now() END)",
                           (task_id, user, state, queue, age_s, confirmed))
    return task_id


async def test_a_delivery_claims_the_fairest_task_whichever_its_message_names(db):
    tasks = Tasks(db, QUEUE)
    for _ in range(2):
        await add(db, 1, "running", 100)
    flood = [await add(db, 1, "queued", 90 - i) for i in range(3)]  # user 1: two running, three waiting
    later = await add(db, 2, "queued", 10)  # user 2: nothing running, one task, the newest of all
    earlier = await add(db, 5, "queued", 20)  # user 5: nothing running either, waiting longer
    third = await add(db, 3, "queued", 50)
    await add(db, 3, "running", 60)
    elsewhere = await add(db, 4, "queued", 500, queue="another")  # another queue's: never ours

    claimed = [(await tasks.claim(flood[0], "w")) for _ in range(6)]
    # Users 5 and 2 (none running; 5 waiting longer) first, then user 3 (one running), then user 1's
    # tasks in its own order.
    assert [t.id for t in claimed if t] == [earlier, later, third, flood[0], flood[1], flood[2]]
    assert all(t.state.value == "running" and t.attempts == 1 for t in claimed if t)
    assert await tasks.claim(uuid.uuid4(), "w") is None  # nothing of this queue waits
    assert await Tasks(db, "another").claim(uuid.uuid4(), "w") is not None
    async with db.statement() as conn:
        row = await (await conn.execute("SELECT state FROM tasks WHERE id = %s", (elsewhere,))).fetchone()
    assert row["state"] == "running"  # by its own queue's delivery


async def test_a_redelivery_resumes_what_the_lost_delivery_ran(db):
    tasks = Tasks(db, QUEUE)
    first, second = await add(db, 1, "queued", 20), await add(db, 1, "queued", 10)
    message = uuid.uuid4()
    ran = await tasks.claim(message, "dead-worker")
    assert ran is not None and ran.id == first
    # Its worker dies: the broker hands the same message to another worker, flagged as redelivered.
    resumed = await tasks.claim(message, "w2", redelivered=True)
    assert resumed is not None and resumed.id == first and resumed.attempts == 2
    # A redelivery whose delivery had claimed nothing takes the fairest waiting task.
    nothing_ran = await tasks.claim(uuid.uuid4(), "w2", redelivered=True)
    assert nothing_ran is not None and nothing_ran.id == second and nothing_ran.attempts == 1


async def test_concurrent_claims_take_each_task_once(db):
    tasks = Tasks(db, QUEUE)
    waiting = {await add(db, user, "queued", 100 - i) for i in range(10) for user in (1, 2, 3, 4)}
    claimed = await asyncio.gather(*(tasks.claim(uuid.uuid4(), f"w{i}") for i in range(50)))
    ids = [t.id for t in claimed if t is not None]
    assert sorted(ids) == sorted(waiting)  # every one once; the ten deliveries too many find nothing


async def test_a_claim_waits_for_a_row_its_submission_still_holds(db):
    """The submission marks its task published after the broker took the message, so the delivery can
    come while that update holds the row: the claim tries again until it has it, rather than claim
    nothing (the message would be spent and its task left waiting with none)."""
    tasks = Tasks(db, QUEUE)
    task_id = await add(db, 1, "queued", 1, confirmed=False)
    async with await psycopg.AsyncConnection.connect(db.pool.conninfo) as holder:
        await holder.execute("UPDATE tasks SET published_at = now() WHERE id = %s", (task_id,))
        claiming = asyncio.create_task(tasks.claim(task_id, "w"))
        await asyncio.sleep(0.3)
        assert not claiming.done()
        await holder.commit()
    claimed = await claiming
    assert claimed is not None and claimed.id == task_id


async def test_a_task_the_broker_has_not_confirmed_is_taken_only_by_its_own_message(db):
    """Its publication may yet fail (the submission is then refused and the task deleted): another
    message taking it would run a refused task, and leave that message's own task with none."""
    tasks = Tasks(db, QUEUE)
    unconfirmed = await add(db, 1, "queued", 5, confirmed=False)  # the fairest, were it confirmed
    confirmed = await add(db, 2, "queued", 1)
    assert (await tasks.claim(uuid.uuid4(), "w")).id == confirmed
    assert (await tasks.claim(unconfirmed, "w")).id == unconfirmed
    await add(db, 3, "queued", 60, confirmed=False)  # a dead submission's: the sweep publishes it again
    assert await tasks.claim(uuid.uuid4(), "w") is None


async def test_another_users_hello_does_not_wait_behind_one_users_backlog(settings):
    """One user queues twelve 1-second tasks on a worker of two slots, then another user a hello: the
    hello finishes after a few of them, not after all (it waited in the broker behind all twelve)."""
    async with own_server(settings, queue=f"{settings.queue}.fair", concurrency=2) as api:
        flooder, other = await api.user("flood"), await api.user("hello")
        flood = [await api.submit(flooder, language="python", code=f"import time; time.sleep(1); print({i})")
                 for i in range(12)]
        hello = await api.submit(other, language="python", code="print('hi')")
        assert (await api.result(other, hello))["stdout"] == "hi\n"
        results = await asyncio.gather(*(api.result(flooder, task_id) for task_id in flood))
        assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(12)]
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[])"
                                    " AND finished_at < (SELECT finished_at FROM tasks WHERE id = %s)", (flood, hello))
        finished_before = (await cursor.fetchone())[0]
    # The worker had four of them (two running, two waiting for a slot) when the hello came; it
    # takes the hello at the next free delivery and runs it at the next free slot.
    assert finished_before <= 4, f"{finished_before} of the 12 finished before the other user's hello"
