"""The API side of tasks: submit, read, wait for, list and cancel them."""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import UTC, timedelta
from typing import Any, TypeVar

from .. import metrics
from ..domain import HistoryQuery, Task, TaskRequest, TaskState, Verdict
from ..errors import AppError, Conflict, NotFound, QueueFull, RateLimited
from ..repository.notify import TaskListener
from ..repository.queue import Queue
from ..repository.tasks import Tasks
from .admission import Admission

BUSY_RETRY_S = 5
DONE_REMEMBERED = 100_000  # finished tasks whose owner an API process keeps in memory (~100 bytes each)
DONE_REMEMBERED_S = 3600  # and for how long: far less than retention, so a deleted task is soon 404 again
T = TypeVar("T")


class TaskService:
    """The API side of tasks."""

    def __init__(self, tasks: Tasks, queue: Queue, admission: Admission, finished: TaskListener, *,
                 max_queue: int, user_max_pending: int) -> None:
        self.admission = admission
        self.tasks = tasks
        self.queue = queue
        self.plugins = admission.plugins
        self.finished = finished
        self.max_queue = max_queue
        self.user_max_pending = user_max_pending
        self._depth = (0.0, 0)  # (when, depth): a burst of submissions asks the broker once a second
        self._accepted = 0  # submissions this process accepted since that reading
        # Finished is final: whose finished tasks these are, so that polling them needs no database.
        self._done: OrderedDict[uuid.UUID, tuple[int, float]] = OrderedDict()  # task: (owner, when seen done)

    async def submit(self, user_id: int, request: TaskRequest, *, live: bool = False, tty: bool = False) -> uuid.UUID:
        admitted, quota = await self.admission.task(user_id, request)
        request, plugin, limits = admitted.request, admitted.plugin, admitted.limits
        max_pending = self.user_max_pending if quota.max_pending is None else quota.max_pending
        if await self.queue_depth() >= self.max_queue:
            raise QueueFull("The task queue is full; try again shortly.", BUSY_RETRY_S)
        self._accepted += 1  # no await since the check: concurrent submissions see this one
        task = Task(uuid.uuid4(), user_id, plugin.name, request.code, request.stdin, list(request.args), limits,
                    request.files, request.tests, request.checker, request.stop_on_failure,
                    callback_url=request.callback_url, live=live, tty=live and tty, compat=request.compat,
                    program=request.program, outputs=request.outputs, network=request.network)
        try:
            if not await self.tasks.add(task, max_pending or 1 << 31):
                raise RateLimited(f"You have {max_pending} unfinished tasks; wait for some to finish.", BUSY_RETRY_S)
            try:
                await self.queue.publish(task.id)
            except BaseException:
                # Not confirmed by the broker: take the task back so nothing is left half-made.
                await asyncio.shield(self.tasks.delete_unstarted(task.id))
                raise
        except BaseException:
            self._accepted -= 1
            raise
        await self.tasks.mark_published(task.id)
        metrics.TASKS_SUBMITTED.labels(plugin.name).inc()
        return task.id

    async def usage_report(self, user_id: int, days: int) -> dict[str, Any]:
        """Per UTC day of the last `days`, what the user's tasks spent, in all and by language, with the quotas."""
        admission = self.admission
        now = admission.clock().astimezone(UTC)
        rows = await admission.usage.days(user_id, now.date() - timedelta(days=days - 1))
        quota, used_ms = await admission.usage.quota(user_id, now.date())
        by_day: dict[str, dict[str, Any]] = {}
        for row in rows:
            day = by_day.setdefault(row["day"].isoformat(), {"day": row["day"].isoformat(), "tasks": 0, "cpu_ms": 0,
                                                             "wall_ms": 0, "languages": {}})
            figures = {name: int(row[name]) for name in ("tasks", "cpu_ms", "wall_ms")}
            day["languages"][row["language"]] = figures
            for name, value in figures.items():
                day[name] += value
        return {"days": list(by_day.values()), "quota": {
            "cpu_s_per_day": admission.cpu_s_per_day if quota.cpu_s_per_day is None else quota.cpu_s_per_day,
            "cpu_ms_today": used_ms,
            "max_pending": self.user_max_pending if quota.max_pending is None else quota.max_pending,
            "per_minute": admission.rates.per_minute if quota.per_minute is None else quota.per_minute}}

    async def queue_depth(self) -> int:
        """The broker's last count (at most a second old) and what this process accepted since."""
        checked_at, depth = self._depth
        if time.monotonic() - checked_at > 1:
            depth = await self.queue.depth()
            self._depth, self._accepted = (time.monotonic(), depth), 0
        return depth + self._accepted

    async def get(self, user_id: int, task_id: str, wait_s: float = 0) -> Task:
        """The task; with wait_s, as soon as it finishes, or as it is when wait_s have passed."""
        parsed = _parse_id(task_id)
        deadline = time.monotonic() + wait_s
        with self.finished.watch(parsed) as finished:
            while True:
                finished.clear()
                task = await _found(task_id, self.tasks.get(parsed, user_id))
                left = deadline - time.monotonic()
                if task.state is TaskState.DONE:
                    self._remember_done(parsed, user_id)
                    return task
                if left <= 0:
                    return task
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), left)

    async def state(self, user_id: int, task_id: str) -> TaskState:
        parsed = _parse_id(task_id)
        owner, seen = self._done.get(parsed, (None, 0.0))
        if owner == user_id and time.monotonic() - seen < DONE_REMEMBERED_S:
            return TaskState.DONE
        state = await _found(task_id, self.tasks.state(parsed, user_id))
        if state is TaskState.DONE:
            self._remember_done(parsed, user_id)
        return state

    async def get_many(self, user_id: int, task_ids: list[str], *, whole: bool = False) -> list[Task | AppError]:
        """Each task of the user's, or the 404 that asking for it alone would get (whole: with its code)."""
        parsed = [_maybe_id(task_id) for task_id in task_ids]
        found = await self.tasks.get_many([p for p in parsed if p], user_id, whole=whole)
        return [(found.get(p) if p else None) or NotFound(f"There is no task {t!r}.")
                for t, p in zip(task_ids, parsed, strict=True)]

    async def page(self, user_id: int, page: int, per_page: int) -> tuple[list[Task], int]:
        return await self.tasks.page(user_id, (page - 1) * per_page, per_page)

    async def delete(self, user_id: int, task_id: str) -> Task:
        """Deletes a finished task of the user's; 409 while it is queued or running."""
        parsed = _parse_id(task_id)
        deleted = await self.tasks.delete_finished(parsed, user_id)
        if deleted is None:
            state = await _found(task_id, self.tasks.state(parsed, user_id))
            raise Conflict(f"The task is {state.value}; only a finished task can be deleted.")
        self._done.pop(parsed, None)
        return deleted

    async def history(self, user_id: int, query: HistoryQuery) -> list[dict[str, Any]]:
        language = self.plugins.get(query.language).name if query.language else None
        return await self.tasks.history(user_id, state=query.state, language=language, before=query.before,
                                        limit=query.limit)

    async def cancel(self, user_id: int, task_id: str) -> bool:
        """True when the task ended cancelled at once (it was queued), False when its worker was asked
        to stop it (it runs); 409 when it has finished, 404 when there is no such task of the user's."""
        parsed = _parse_id(task_id)
        for _ in range(2):  # a task may move on between the two tries: from queued to running
            if await self.withdraw(user_id, task_id):
                return True
            if await self.tasks.request_cancel(parsed, user_id):
                return False
        await _found(task_id, self.tasks.state(parsed, user_id))
        raise Conflict("The task has finished; there is nothing to cancel.")

    async def withdraw(self, user_id: int, task_id: str) -> bool:
        """Cancels the task only while it waits in the queue (True); one that runs or has finished is left be."""
        if language := await self.tasks.cancel_queued(_parse_id(task_id), user_id):
            metrics.TASKS_FINISHED.labels(language, Verdict.CANCELLED.value).inc()
            return True
        return False

    def _remember_done(self, task_id: uuid.UUID, user_id: int) -> None:
        self._done[task_id] = (user_id, time.monotonic())
        self._done.move_to_end(task_id)
        if len(self._done) > DONE_REMEMBERED:
            self._done.popitem(last=False)


def _maybe_id(task_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        return None


def _parse_id(task_id: str) -> uuid.UUID:
    """A malformed id is the same 404 as an unknown one."""
    parsed = _maybe_id(task_id)
    if parsed is None:
        raise NotFound(f"There is no task {task_id!r}.")
    return parsed


async def _found(task_id: str, fetch: Awaitable[T | None]) -> T:
    """What fetch finds of the user's; anything else (another user's too) is the same 404."""
    found = await fetch
    if found is None:
        raise NotFound(f"There is no task {task_id!r}.")
    return found

