"""Tasks in PostgreSQL. State moves queued → running → done, and never back from done."""
from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ..checkers import parse_checker
from ..domain import Artifact, CaseResult, Limits, Program, Result, Task, TaskState, TestCase, Verdict
from ..network import NetworkPolicy
from ..errors import Unavailable
from .db import Database
from .notify import CANCEL, FINISHED
from .outbox import ENQUEUE

SWEEP_LOCK = 0x73776570  # one sweeper at a time, whichever worker gets it
RETENTION_BATCH = 500  # tasks deleted per sweep: a long backlog goes in steps, never in one long lock

COLUMNS = (
    "id, user_id, language, code, stdin, args, time_ms, memory_mb, state, attempts, created_at, started_at,"
    " finished_at, verdict, exit_code, signal, stdout, stderr, compile_output, truncated, cpu_ms, wall_ms, memory_kb,"
    " files, tests, checker, stop_on_failure, case_results, cancel_requested, callback_url, live, tty, compat,"
    " program, outputs, artifacts, network, network_usage"
)
# What a result needs, without the submission's own texts: code, stdin and files come empty, and
# the test cases only counted (a batch of large tasks once made the API hold every byte of them).
RESULT_COLUMNS = COLUMNS.replace("code, stdin,", "''::bytea AS code, ''::bytea AS stdin,").replace(
    " files, tests,", " '[]'::jsonb AS files, (SELECT coalesce(jsonb_agg(jsonb_build_object('stdin', '', 'args', '[]'::jsonb,"
    " 'expected', '')), '[]'::jsonb) FROM generate_series(1, jsonb_array_length(tests))) AS tests,")
USER_LOCK = 0x75736572  # with a user's id: one submission of that user's at a time passes the cap check
# A task of the repository's queue: one that names none (added before queues were recorded), or any
# task when the repository is of no one queue.
OF_QUEUE = "(queue IS NULL OR %(queue)s::text IS NULL OR queue = %(queue)s)"
# A task any delivery of its queue may take: queued, and its message confirmed by the broker. (Taken
# before, by another message, a task whose publication then failed would run after its submission
# was refused, and that message's own task would be left with none.)
CLAIMABLE = f"state = 'queued' AND published_at IS NOT NULL AND {OF_QUEUE}"
UNPUBLISHED_AFTER_S = 30  # a submission takes milliseconds; older and unconfirmed means the API died
# The fairest queued task of the queue: of the users with queued tasks, the one with the fewest
# running tasks, then the one waiting longest; that user's oldest queued task. The waiting users and
# their oldest tasks come from skipping through the index one user at a time (a probe per user, not a
# read of every queued row); the running tasks, few (at most what the workers hold), are counted in
# one pass. A row another statement holds is skipped: a claim never waits for a lock, so claims never
# deadlock (one that waited could hold a row it then passed over while it waited for the next).
FAIR_PICK = (
    "waiting (user_id, since) AS ("
    "  (SELECT user_id, created_at FROM tasks WHERE " + CLAIMABLE + " ORDER BY user_id, created_at LIMIT 1)"
    " UNION ALL SELECT next.user_id, next.created_at FROM waiting CROSS JOIN LATERAL ("
    "  SELECT user_id, created_at FROM tasks WHERE " + CLAIMABLE + " AND user_id > waiting.user_id"
    "  ORDER BY user_id, created_at LIMIT 1) AS next),"
    " running (user_id, count) AS (SELECT user_id, count(*) FROM tasks WHERE state = 'running' GROUP BY user_id),"
    " pick AS (SELECT next.id AS picked FROM (SELECT user_id FROM waiting LEFT JOIN running USING (user_id)"
    "   ORDER BY coalesce(count, 0), since OFFSET 0) AS fairest"  # OFFSET 0: sorted before the lateral below,
    "  CROSS JOIN LATERAL (SELECT id FROM tasks WHERE tasks.user_id = fairest.user_id"  # run for one user at a time
    "   AND " + CLAIMABLE + " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS next LIMIT 1)"
)
# Whether a task of the queue waits that some message stands for: one confirmed, or one whose
# submission is under way (older and unconfirmed, the sweep publishes it again).
WAITING = (f"SELECT EXISTS (SELECT FROM tasks WHERE state = 'queued' AND {OF_QUEUE} AND (published_at IS NOT NULL"
           f" OR created_at > now() - make_interval(secs => {UNPUBLISHED_AFTER_S}))) AS waits")
CLAIM_RETRY_S, CLAIM_TRIES = 0.01, 100  # while the tasks that wait are held by other statements
CLAIMED = "state = 'running', attempts = attempts + 1, worker = %(worker)s, started_at = now(), message = %(message)s"
NAMED = f"UPDATE tasks SET {CLAIMED} WHERE id = %(message)s AND state = 'queued' AND {OF_QUEUE}"
# A claim's tries, in order: the task its message names when that is plainly the fairest (its user runs
# nothing and no task waits longer: the usual case, in one short statement); the fairest; the task its
# message names, which may be unconfirmed (its submission is marking it confirmed: its message is this one).
CLAIMS = (
    NAMED + " AND NOT EXISTS (SELECT FROM tasks AS busy WHERE busy.user_id = tasks.user_id AND busy.state = 'running')"
    f" AND NOT EXISTS (SELECT FROM tasks AS older WHERE {CLAIMABLE} AND older.created_at < tasks.created_at)",
    f"WITH RECURSIVE {FAIR_PICK} UPDATE tasks SET {CLAIMED} FROM pick WHERE id = picked",
    NAMED,
)
SUMMARY = "id, language, state, verdict, created_at, started_at, finished_at"
OUTPUT_FIELDS = ("stdout", "stderr")  # bytes in a Result, base64 text in JSON (output may be any bytes)


def _b64(text: str) -> str:
    """Text that may hold NUL, which jsonb cannot, as base64 in jsonb."""
    return base64.b64encode(text.encode()).decode()


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode()


def _case_document(case: CaseResult) -> dict[str, Any]:
    document = {name: getattr(case, name) for name in CaseResult.__dataclass_fields__}
    document["verdict"] = case.verdict.value
    for name in OUTPUT_FIELDS:
        document[name] = base64.b64encode(document[name]).decode()
    return document


def _artifacts_document(result: Result) -> Jsonb | None:
    if not result.artifacts and not result.artifacts_truncated:
        return None
    return Jsonb({"files": [{"name": a.name, "content": base64.b64encode(a.content).decode()} for a in result.artifacts],
                  "truncated": result.artifacts_truncated})


def _case(document: dict[str, Any]) -> CaseResult:
    return CaseResult(**{**document, "verdict": Verdict(document["verdict"]),
                         **{name: base64.b64decode(document[name]) for name in OUTPUT_FIELDS}})


def _task(row: dict[str, Any]) -> Task:
    result = None
    if row["verdict"] is not None:
        result = Result(
            verdict=Verdict(row["verdict"]),
            exit_code=row["exit_code"],
            signal=row["signal"],
            stdout=bytes(row["stdout"] or b""),
            stderr=bytes(row["stderr"] or b""),
            compile_output=bytes(row["compile_output"] or b""),
            truncated=bool(row["truncated"]),
            time_ms=row["cpu_ms"],
            wall_ms=row["wall_ms"],
            memory_kb=row["memory_kb"],
            tests=None if row["case_results"] is None else tuple(_case(c) for c in row["case_results"]),
            artifacts=tuple(Artifact(a["name"], base64.b64decode(a["content"])) for a in (row["artifacts"] or {}).get("files", [])),
            artifacts_truncated=bool((row["artifacts"] or {}).get("truncated")),
            network_usage=row["network_usage"],
        )
    return Task(
        id=row["id"],
        user_id=row["user_id"],
        language=row["language"],
        code=bytes(row["code"]).decode(),
        stdin=bytes(row["stdin"]).decode(),
        args=row["args"],
        limits=Limits(time_ms=row["time_ms"], memory_mb=row["memory_mb"]),
        files=tuple((f["name"], _text(f["content"])) for f in row["files"]),
        tests=tuple(TestCase(_text(c["stdin"]), tuple(c["args"]), _text(c["expected"])) for c in row["tests"]),
        checker=parse_checker(row["checker"]),
        stop_on_failure=row["stop_on_failure"],
        cancel_requested=row["cancel_requested"],
        callback_url=row["callback_url"],
        live=row["live"],
        tty=row["tty"],
        compat=row["compat"],
        program=None if row["program"] is None else Program.from_document(row["program"]),
        outputs=tuple(row["outputs"]),
        network=None if row["network"] is None else NetworkPolicy(tuple(row["network"]["allow"])),
        state=TaskState(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result=result,
    )


def _finishing(done: str, returning: str, also: str = "") -> str:
    """One statement that finishes a task: `done`, an UPDATE returning the finished row's id and
    callback_url, then (`also`, more CTEs on done), its webhook queued and the news for API processes
    (a NOTIFY, sent at the commit), returning `returning` of the row. Parameters: %(hook)s, the
    webhook delivery's id, beside done's own."""
    return (f"WITH done AS ({done}){also}, hook AS ({ENQUEUE} FROM done WHERE callback_url IS NOT NULL)"
            f" SELECT {returning}, pg_notify('{FINISHED}', id::text) FROM done")


class Tasks:
    def __init__(self, db: Database, queue: str | None = None) -> None:
        """queue: the RabbitMQ queue whose messages announce these tasks: a task added is recorded as
        its, and claims and the sweep take only its tasks (None: any queue's)."""
        self.db = db
        self.queue = queue

    async def add(self, task: Task, max_unfinished: int) -> bool:
        """Stores the task, unless its user has max_unfinished already (False): the count and the
        insert are one step for concurrent submissions of a user's. Sent as one pipeline, BEGIN to
        COMMIT: one round trip. The count is the insert's condition: in READ COMMITTED its statement
        sees every submission committed before the lock was ours."""
        async with self.db.statement() as conn:
            async with conn.pipeline(), conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (USER_LOCK, task.user_id))
                cursor = await conn.execute(
                    "INSERT INTO tasks (id, user_id, language, code, stdin, args, time_ms, memory_mb, files, tests, checker,"
                    " stop_on_failure, callback_url, live, tty, compat, program, outputs, network, queue)"
                    " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
                    " WHERE (SELECT count(*) FROM tasks WHERE user_id = %s AND state <> 'done') < %s RETURNING id",
                    (task.id, task.user_id, task.language, task.code.encode(), task.stdin.encode(), Jsonb(task.args),
                     task.limits.time_ms, task.limits.memory_mb,
                     Jsonb([{"name": name, "content": _b64(content)} for name, content in task.files]),
                     Jsonb([{"stdin": _b64(c.stdin), "args": list(c.args), "expected": _b64(c.expected)} for c in task.tests]),
                     Jsonb(task.checker.document()), task.stop_on_failure, task.callback_url, task.live, task.tty,
                     None if task.compat is None else Jsonb(task.compat),
                     None if task.program is None else Jsonb(task.program.document()), Jsonb(list(task.outputs)),
                     None if task.network is None else Jsonb(task.network.document()), self.queue, task.user_id, max_unfinished),
                )
            return await cursor.fetchone() is not None

    async def mark_published(self, task_id: uuid.UUID) -> None:
        async with self.db.statement() as conn:
            await conn.execute("UPDATE tasks SET published_at = now() WHERE id = %s", (task_id,))

    async def requeue_orphans(self, lease_s: int, unpublished_after_s: int) -> list[uuid.UUID]:
        """Tasks to publish again: running on a worker silent for lease_s, or committed but never
        confirmed by the broker (the API died in between). Only one process sweeps at a time.
        Who lives is read in the same statement: a worker registers before it claims, so a task it
        claimed a moment ago is never taken for an orphan."""
        async with self.db.transaction() as conn:
            async with conn.transaction():
                locked = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (SWEEP_LOCK,))).fetchone()
                if not locked["ok"]:
                    return []
                cursor = await conn.execute(
                    "UPDATE tasks SET state = 'queued', worker = NULL, published_at = NULL"
                    " WHERE ((state = 'running' AND NOT EXISTS (SELECT 1 FROM workers WHERE workers.id = tasks.worker"
                    "  AND heartbeat_at > now() - make_interval(secs => %(lease)s)))"
                    " OR (state = 'queued' AND published_at IS NULL AND created_at < now() - make_interval(secs => %(unpublished)s)))"
                    f" AND {OF_QUEUE} RETURNING id",
                    {"lease": lease_s, "unpublished": unpublished_after_s, "queue": self.queue},
                )
                return [row["id"] for row in await cursor.fetchall()]

    async def delete_expired(self, days: int, batch: int = RETENTION_BATCH) -> int:
        """Deletes up to `batch` tasks finished more than `days` ago (their webhooks go with them)."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state = 'done'"
                " AND finished_at < now() - make_interval(days => %s) LIMIT %s)", (days, batch))
            return cursor.rowcount

    async def delete_unstarted(self, task_id: uuid.UUID) -> None:
        """Takes back a task whose hand-off to the queue failed."""
        async with self.db.statement() as conn:
            await conn.execute("DELETE FROM tasks WHERE id = %s AND state = 'queued' AND attempts = 0", (task_id,))

    async def get(self, task_id: uuid.UUID, user_id: int) -> Task | None:
        """The task, if it exists and belongs to that user."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = %s AND user_id = %s", (task_id, user_id))
            row = await cursor.fetchone()
            return _task(row) if row else None

    async def state(self, task_id: uuid.UUID, user_id: int) -> TaskState | None:
        """Only the state: status polling is the hottest call, and a full row carries code and output."""
        async with self.db.statement() as conn:
            cursor = await conn.execute("SELECT state FROM tasks WHERE id = %s AND user_id = %s", (task_id, user_id))
            row = await cursor.fetchone()
            return TaskState(row["state"]) if row else None

    async def get_many(self, task_ids: list[uuid.UUID], user_id: int, *, whole: bool = False) -> dict[uuid.UUID, Task]:
        """The user's tasks among task_ids; their code, stdin and files only when whole."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS if whole else RESULT_COLUMNS} FROM tasks"
                                        " WHERE id = ANY(%s) AND user_id = %s", (task_ids, user_id))
            return {row["id"]: _task(row) for row in await cursor.fetchall()}

    async def page(self, user_id: int, offset: int, limit: int) -> tuple[list[Task], int]:
        """A page of the user's tasks, newest first, and how many there are."""
        async with self.db.transaction() as conn:
            total = (await (await conn.execute("SELECT count(*) AS n FROM tasks WHERE user_id = %s", (user_id,))).fetchone())["n"]
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE user_id = %s ORDER BY created_at DESC, id DESC"
                                        " OFFSET %s LIMIT %s", (user_id, offset, limit))
            return [_task(row) for row in await cursor.fetchall()], total

    async def delete_finished(self, task_id: uuid.UUID, user_id: int) -> Task | None:
        """Deletes the user's finished task and returns it as it was; None if there is no such finished task."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(f"DELETE FROM tasks WHERE id = %s AND user_id = %s AND state = 'done'"
                                        f" RETURNING {COLUMNS}", (task_id, user_id))
            row = await cursor.fetchone()
            return _task(row) if row else None

    async def history(self, user_id: int, *, state: str | None, language: str | None,
                      before: tuple[datetime, uuid.UUID] | None, limit: int) -> list[dict[str, Any]]:
        """The user's tasks, newest first, older than `before` (the last of the previous page): pages do
        not shift when tasks are added meanwhile."""
        async with self.db.statement() as conn:
            cursor = await conn.execute(
                f"SELECT {SUMMARY} FROM tasks WHERE user_id = %s AND (%s::text IS NULL OR state = %s)"
                " AND (%s::text IS NULL OR language = %s)"
                " AND (%s::timestamptz IS NULL OR (created_at, id) < (%s, %s))"
                " ORDER BY created_at DESC, id DESC LIMIT %s",
                (user_id, state, state, language, language, *((before[0], *before) if before else (None, None, None)), limit))
            return list(await cursor.fetchall())

    async def cancel_queued(self, task_id: uuid.UUID, user_id: int) -> str | None:
        """Ends a task that no worker has taken: it never runs (a claim skips finished tasks). Returns
        its language, or None when it was not queued."""
        async with self.db.statement() as conn:
            row = await (await conn.execute(_finishing(
                "UPDATE tasks SET state = 'done', verdict = 'cancelled', finished_at = now()"
                " WHERE id = %(id)s AND user_id = %(user)s AND state = 'queued' RETURNING id, callback_url, language",
                "language"), {"id": task_id, "user": user_id, "hook": uuid.uuid4()})).fetchone()
            return None if row is None else row["language"]

    async def request_cancel(self, task_id: uuid.UUID, user_id: int) -> bool:
        """Asks the worker running the task to stop it; it is told at once (NOTIFY) and can read it here."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute("UPDATE tasks SET cancel_requested = true"
                                        " WHERE id = %s AND user_id = %s AND state = 'running'", (task_id, user_id))
            if cursor.rowcount != 1:
                return False
            await conn.execute("SELECT pg_notify(%s, %s)", (CANCEL, str(task_id)))
            return True

    async def cancel_requested(self, task_id: uuid.UUID) -> bool:
        async with self.db.statement() as conn:
            row = await (await conn.execute("SELECT cancel_requested FROM tasks WHERE id = %s", (task_id,))).fetchone()
            return bool(row and row["cancel_requested"])

    async def claim(self, message: uuid.UUID, worker: str, *, redelivered: bool = False) -> Task | None:
        """Marks a task as running on this worker, counts the attempt and returns it; None when no task
        waits. A message says that there is work, not which: its delivery takes the fairest queued
        task of the queue (FAIR_PICK), whichever id the message names, so that one user's backlog in
        the broker holds nobody else back. A redelivery (the delivery's worker died, or handed it
        back) first resumes the task that the lost delivery was running."""
        params = {"message": message, "worker": worker, "queue": self.queue}
        async with self.db.statement() as conn:
            if redelivered:
                row = await (await conn.execute(
                    # (A task claimed before messages were recorded counts as its own message's.)
                    f"UPDATE tasks SET {CLAIMED} WHERE id = (SELECT id FROM tasks WHERE state = 'running'"
                    f" AND coalesce(message, id) = %(message)s AND {OF_QUEUE} LIMIT 1 FOR UPDATE SKIP LOCKED)"
                    f" RETURNING {COLUMNS}", params)).fetchone()
                if row is not None:
                    return _task(row)
            # The fair choice skips a task another statement holds (a claim under way). While a task
            # that some message stands for waits and none was taken, the claim tries again: a message
            # is never spent while its task waits.
            for _ in range(CLAIM_TRIES):
                for claim in CLAIMS:
                    if (row := await (await conn.execute(f"{claim} RETURNING {COLUMNS}", params)).fetchone()) is not None:
                        return _task(row)
                if not (await (await conn.execute(WAITING, params)).fetchone())["waits"]:
                    return None
                await asyncio.sleep(CLAIM_RETRY_S)
        raise Unavailable("The tasks that wait stay held by other statements; the message goes back to the queue.")

    async def release(self, task_id: uuid.UUID) -> None:
        """Puts a running task back in the queue's hands (the worker is stopping or the platform failed)."""
        async with self.db.statement() as conn:
            await conn.execute("UPDATE tasks SET state = 'queued', worker = NULL WHERE id = %s AND state = 'running'", (task_id,))

    async def finish(self, task_id: uuid.UUID, result: Result) -> bool:
        """Writes the result once, in one statement; a duplicate delivery finds the task done and
        changes nothing. Its commit tells every API process listening (finished.py) that the task is done."""
        cpu_ms, wall_ms = result.spent()
        async with self.db.statement() as conn:
            cursor = await conn.execute(_finishing(
                "UPDATE tasks SET state = 'done', finished_at = now(), verdict = %(verdict)s, exit_code = %(exit)s,"
                " signal = %(signal)s, stdout = %(stdout)s, stderr = %(stderr)s, compile_output = %(compile)s,"
                " truncated = %(truncated)s, cpu_ms = %(cpu)s, wall_ms = %(wall)s, memory_kb = %(memory)s,"
                " container = %(container)s, case_results = %(cases)s, artifacts = %(artifacts)s, network_usage = %(usage)s"
                " WHERE id = %(id)s AND state <> 'done'"
                " RETURNING id, callback_url, user_id, language, (finished_at AT TIME ZONE 'UTC')::date AS day",
                "id", also=", usage AS (INSERT INTO usage_daily (user_id, day, language, tasks, cpu_ms, wall_ms)"
                " SELECT user_id, day, language, 1, %(spent_cpu)s, %(spent_wall)s FROM done"
                " ON CONFLICT (user_id, day, language) DO UPDATE SET tasks = usage_daily.tasks + 1,"
                " cpu_ms = usage_daily.cpu_ms + EXCLUDED.cpu_ms, wall_ms = usage_daily.wall_ms + EXCLUDED.wall_ms)"),
                {"verdict": result.verdict.value, "exit": result.exit_code, "signal": result.signal, "stdout": result.stdout,
                 "stderr": result.stderr, "compile": result.compile_output, "truncated": result.truncated,
                 "cpu": result.time_ms, "wall": result.wall_ms, "memory": result.memory_kb, "container": result.container,
                 "cases": None if result.tests is None else Jsonb([_case_document(c) for c in result.tests]),
                 "artifacts": _artifacts_document(result),
                 "usage": None if result.network_usage is None else Jsonb(result.network_usage), "id": task_id, "spent_cpu": cpu_ms, "spent_wall": wall_ms,
                 "hook": uuid.uuid4()})
            return await cursor.fetchone() is not None
