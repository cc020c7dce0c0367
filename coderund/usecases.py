"""What coderund does: register, log in, submit, report, execute. Storage and Docker come in as objects."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import metrics
from .domain import Credentials, HistoryQuery, Result, Task, TaskRequest, TaskState, Verdict, result_document
from .errors import (AppError, Conflict, NotFound, QueueFull, RateLimited, Unauthorized, Unavailable, UnsupportedLanguage,
                     ValidationFailed)
from .passwords import DUMMY_HASH, hash_password, verify_password
from .plugins import Plugins
from .repository.callbacks import AddressRefused, CallbackFailed, Callbacks, check
from .repository.live import END, EOF, START, STDIN, LiveChannel
from .repository.notify import TaskListener
from .repository.outbox import Outbox, PendingWebhook
from .repository.queue import Delivery, Queue
from .repository.rates import Rates
from .repository.sessions import Sessions
from .repository.tasks import Tasks
from .repository.users import UserRow, Users
from .sandbox.box import Live
from .sandbox.engine import SandboxError, SandboxRefused
from .sandbox.runner import Sandbox

log = logging.getLogger(__name__)
BUSY_RETRY_S = 5
WEBHOOK_BATCH = 10  # deliveries sent at once by one process
WEBHOOK_POLL_S = 1  # how often the outbox is looked at when it had nothing due
WEBHOOK_RETRIES = 5  # after the first attempt; with pauses growing 3 times each, ~10 minutes at 5 s
DONE_REMEMBERED = 100_000  # finished tasks whose owner an API process keeps in memory (~100 bytes each)
DONE_REMEMBERED_S = 3600  # and for how long: far less than retention, so a deleted task is soon 404 again
LIVE_WAIT_MS = 1000  # a live run's reader waits this long for output before it looks at the task again
LIVE_CHECK_S = 5  # and asks the database whether the task finished this often, should a notice be lost
T = TypeVar("T")


@dataclass(frozen=True)
class Login:
    token: str
    expires_in: int


class Accounts:
    def __init__(self, users: Users, sessions: Sessions, address_rates: Rates, *, max_failures: int,
                 failure_window: int) -> None:
        self.users = users
        self.sessions = sessions
        self.address_rates = address_rates
        self.max_failures = max_failures
        self.failure_window = failure_window
        # Hashes are slow by design: a flood of them must queue, not take every core from the event loop.
        self._hashing = asyncio.Semaphore(os.cpu_count() or 1)

    async def _hash(self, address: str, fn: Callable[..., T], *args: Any) -> T:
        """A password hash for a client address, within its rate and the process's hashing slots."""
        if wait_s := await self.address_rates.take(address):
            metrics.LOGINS.labels("rate_limited").inc()
            raise RateLimited(f"More than {self.address_rates.per_minute} logins or registrations a minute from your"
                              f" address; try again in {wait_s} s.", wait_s)
        async with self._hashing:
            return await asyncio.to_thread(fn, *args)

    async def register(self, credentials: Credentials, address: str) -> UserRow:
        password_hash = await self._hash(address, hash_password, credentials.password)
        return await self.users.create(credentials.username, password_hash)

    async def login(self, credentials: Credentials, address: str) -> Login:
        failures, retry_after = await self.sessions.login_failures(credentials.username)
        if failures >= self.max_failures:
            metrics.LOGINS.labels("rate_limited").inc()
            raise RateLimited("Too many failed logins for this username; try again later.", retry_after)
        user = await self.users.by_username(credentials.username)
        # The same work and the same answer whether the user is unknown or the password wrong.
        valid = await self._hash(address, verify_password, credentials.password, user.password_hash if user else DUMMY_HASH)
        if user is None or not valid:
            await self.sessions.add_login_failure(credentials.username, self.failure_window)
            metrics.LOGINS.labels("failure").inc()
            raise Unauthorized("Unknown username or wrong password.")
        login = Login(await self.sessions.create(user.id), self.sessions.ttl)
        metrics.LOGINS.labels("success").inc()
        return login

    async def logout(self, token: str) -> None:
        await self.sessions.delete(token)

    async def webhook_secret(self, user_id: int, *, rotate: bool = False) -> str:
        """The key that signs the user's webhooks; made on first use, replaced by a rotation."""
        return await self.users.webhook_secret(user_id, secrets.token_hex(32) if rotate else None)

    async def authenticate(self, token: str) -> int:
        user_id = await self.sessions.user_id(token)
        if user_id is None:
            raise Unauthorized("The session has expired or does not exist; log in again.")
        return user_id


class TaskService:
    """The API side of tasks."""

    def __init__(self, tasks: Tasks, queue: Queue, plugins: Plugins, finished: TaskListener, rates: Rates, *,
                 max_queue: int, user_max_pending: int, allow_private_callbacks: bool = False,
                 max_case_seconds: int = 320) -> None:
        self.max_case_ms = max_case_seconds * 1000
        self.allow_private_callbacks = allow_private_callbacks
        self.tasks = tasks
        self.queue = queue
        self.plugins = plugins
        self.finished = finished
        self.rates = rates
        self.max_queue = max_queue
        self.user_max_pending = user_max_pending
        self._depth = (0.0, 0)  # (when, depth): a burst of submissions asks the broker once a second
        self._accepted = 0  # submissions this process accepted since that reading
        # Finished is final: whose finished tasks these are, so that polling them needs no database.
        self._done: OrderedDict[uuid.UUID, tuple[int, float]] = OrderedDict()  # task: (owner, when seen done)

    async def submit(self, user_id: int, request: TaskRequest, *, live: bool = False) -> uuid.UUID:
        plugin, limits = self.plugins.for_request(request)
        if len(request.tests) * limits.time_ms > self.max_case_ms:
            raise ValidationFailed(f"{len(request.tests)} test cases at {limits.time_ms} ms each could hold a sandbox for"
                                   f" longer than {self.max_case_ms // 1000} s; lower 'limits.time_ms' or send fewer cases.")
        if request.callback_url:
            await self._check_callback(request.callback_url)
        if wait_s := await self.rates.take(user_id):
            raise RateLimited(f"More than {self.rates.per_minute} submissions a minute; try again in {wait_s} s.", wait_s)
        if await self._queue_depth() >= self.max_queue:
            raise QueueFull("The task queue is full; try again shortly.", BUSY_RETRY_S)
        self._accepted += 1  # no await since the check: concurrent submissions see this one
        task = Task(uuid.uuid4(), user_id, plugin.name, request.code, request.stdin, list(request.args), limits,
                    request.files, request.tests, request.checker, request.stop_on_failure,
                    callback_url=request.callback_url, live=live)
        try:
            if not await self.tasks.add(task, self.user_max_pending):
                raise RateLimited(f"You have {self.user_max_pending} unfinished tasks; wait for some to finish.", BUSY_RETRY_S)
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

    async def _check_callback(self, url: str) -> None:
        try:
            await check(url, self.allow_private_callbacks)
        except AddressRefused as e:
            raise ValidationFailed(f"'callback_url' may not point there: {e}.") from None
        except OSError:
            raise ValidationFailed("'callback_url' names a host that does not resolve.") from None

    async def _queue_depth(self) -> int:
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

    async def get_many(self, user_id: int, task_ids: list[str]) -> list[Task | AppError]:
        """Each task of the user's, or the 404 that asking for it alone would get."""
        parsed = [_maybe_id(task_id) for task_id in task_ids]
        found = await self.tasks.get_many([p for p in parsed if p], user_id)
        return [(found.get(p) if p else None) or NotFound(f"There is no task {t!r}.")
                for t, p in zip(task_ids, parsed, strict=True)]

    async def history(self, user_id: int, query: HistoryQuery) -> list[dict[str, Any]]:
        language = self.plugins.get(query.language).name if query.language else None
        return await self.tasks.history(user_id, state=query.state, language=language, before=query.before,
                                        limit=query.limit)

    async def cancel(self, user_id: int, task_id: str) -> bool:
        """True when the task ended cancelled at once (it was queued), False when its worker was asked
        to stop it (it runs); 409 when it has finished, 404 when there is no such task of the user's."""
        parsed = _parse_id(task_id)
        for _ in range(2):  # a task may move on between the two tries: from queued to running
            if language := await self.tasks.cancel_queued(parsed, user_id):
                metrics.TASKS_FINISHED.labels(language, Verdict.CANCELLED.value).inc()
                return True
            if await self.tasks.request_cancel(parsed, user_id):
                return False
        await _found(task_id, self.tasks.state(parsed, user_id))
        raise Conflict("The task has finished; there is nothing to cancel.")

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


class LiveRuns:
    """The API side of live runs: a task submitted as live, its stdin passed on, its output read back
    as its worker writes it, through channels any API process and any worker can reach."""

    def __init__(self, tasks: TaskService, channel: LiveChannel, finished: TaskListener) -> None:
        self.tasks = tasks
        self.channel = channel
        self.finished = finished

    async def submit(self, user_id: int, request: TaskRequest) -> uuid.UUID:
        return await self.tasks.submit(user_id, request, live=True)

    async def send(self, task_id: uuid.UUID, data: bytes) -> None:
        await self.channel.put_input(task_id, STDIN, data)

    async def end(self, task_id: uuid.UUID) -> None:
        await self.channel.put_input(task_id, EOF)

    async def output(self, user_id: int, task_id: uuid.UUID) -> AsyncIterator[tuple[str, bytes]]:
        """(kind, bytes) as the program writes them, until the task has finished. Its worker writes
        every piece before it stores the result, and an end mark after; a task that ended with no
        worker (cancelled while queued) is told by the finished notice, or the database now and then."""
        after, quiet_s = START, 0.0
        with self.finished.watch(task_id) as finished:
            while True:
                done = finished.is_set()
                entries = await self.channel.output(task_id, after, None if done else LIVE_WAIT_MS)
                for entry in entries:
                    after = entry.id
                    if entry.kind == END:
                        return
                    yield entry.kind, entry.data
                if done and not entries:
                    return
                quiet_s = 0.0 if entries else quiet_s + LIVE_WAIT_MS / 1000
                if quiet_s >= LIVE_CHECK_S:
                    quiet_s = 0.0
                    if await self.tasks.state(user_id, str(task_id)) is TaskState.DONE:
                        finished.set()


class LiveBridge:
    """The worker side of a live run: the program's output to the channel, pieces that pile up while
    one is on its way merged into one entry; the program's stdin from the channel, until eof."""

    def __init__(self, channel: LiveChannel, task_id: uuid.UUID) -> None:
        self.channel = channel
        self.task_id = task_id
        self.pending: list[tuple[str, bytearray]] = []
        self.sending: asyncio.Future[None] | None = None

    def live(self) -> Live:
        return Live(self.output, self.stdin())

    async def output(self, kind: str, data: bytes) -> None:
        if self.pending and self.pending[-1][0] == kind:
            self.pending[-1][1].extend(data)
        else:
            self.pending.append((kind, bytearray(data)))
        if self.sending is None or self.sending.done():
            self.sending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        while self.pending:
            kind, data = self.pending.pop(0)
            try:
                await self.channel.put_output(self.task_id, kind, bytes(data))
            except Unavailable as e:  # the output is in the result all the same
                log.warning("task %s: live output lost: %s", self.task_id, e.message)

    async def flush(self) -> None:
        if self.sending is not None:
            await self.sending

    async def stdin(self) -> AsyncIterator[bytes]:
        after = START
        while True:
            try:
                entries = await self.channel.input(self.task_id, after, LIVE_WAIT_MS)
            except Unavailable as e:
                log.warning("task %s: live input lost: %s", self.task_id, e.message)
                return
            for entry in entries:
                after = entry.id
                if entry.kind == EOF:
                    return
                yield entry.data


class Executor:
    """The worker side: claim a task, run it in the sandbox, store the result, then ack."""

    def __init__(self, tasks: Tasks, sandbox: Sandbox, plugins: Plugins, cancels: TaskListener, live: LiveChannel, *,
                 worker_id: str, max_attempts: int, case_parallel: int = 1) -> None:
        self.cancels = cancels
        self.live = live
        self.case_parallel = case_parallel  # test cases of one task that may run at once
        self.tasks = tasks
        self.sandbox = sandbox
        self.plugins = plugins
        self.worker_id = worker_id
        self.max_attempts = max_attempts

    async def handle(self, task_id: uuid.UUID, delivery: Delivery) -> Result | None:
        with self.cancels.watch(task_id) as cancelled:  # before the claim: a cancel after it is not missed
            return await self._handle(task_id, delivery, cancelled)

    async def _handle(self, task_id: uuid.UUID, delivery: Delivery, cancelled: asyncio.Event) -> Result | None:
        task = await self.tasks.claim(task_id, self.worker_id)
        if task is None:
            log.info("task %s: gone or already done; dropping the message", task_id)
            await delivery.ack()
            return None
        if task.started_at and task.created_at and task.attempts == 1:
            metrics.QUEUE_WAIT.labels(task.language).observe((task.started_at - task.created_at).total_seconds())
        if task.cancel_requested:
            result = Result(Verdict.CANCELLED)
        elif task.attempts > self.max_attempts:
            log.error("task %s: %d deliveries without a result; giving up", task_id, task.attempts - 1)
            result = Result(Verdict.INTERNAL_ERROR)
        else:
            try:
                result = await self._unless_cancelled(task, cancelled)
            except SandboxRefused as e:
                log.error("task %s: the engine refused its sandbox: %s", task_id, e)
                result = Result(Verdict.INTERNAL_ERROR, stderr=f"coderund: the container engine refused this task: {e}\n".encode())
            except SandboxError as e:
                if task.attempts < self.max_attempts:
                    log.warning("task %s: platform failure, will retry: %s", task_id, e)
                    await self.tasks.release(task_id)
                    await delivery.requeue()
                    return None
                log.error("task %s: platform failure on the last attempt: %s", task_id, e)
                result = Result(Verdict.INTERNAL_ERROR)
        if await self.tasks.finish(task_id, result):
            metrics.TASKS_FINISHED.labels(task.language, result.verdict.value).inc()
        if task.live:  # after the result is stored: a reader that sees the mark finds the result
            with contextlib.suppress(Unavailable):
                await self.live.put_output(task_id, END)
        await delivery.ack()
        log.info("task %s: %s", task_id, result.verdict.value)
        return result

    async def _unless_cancelled(self, task: Task, cancelled: asyncio.Event) -> Result:
        """Runs the task; a cancel of it stops the run, and so its sandbox, which goes at once."""
        running = asyncio.ensure_future(self.execute(task))
        try:
            while True:
                news = asyncio.ensure_future(cancelled.wait())
                await asyncio.wait({running, news}, return_when=asyncio.FIRST_COMPLETED)
                news.cancel()
                if running.done():
                    return running.result()
                cancelled.clear()
                if await self.tasks.cancel_requested(task.id):  # news may be a reconnect: it says
                    log.info("task %s: cancelled while it ran", task.id)
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)
                    return Result(Verdict.CANCELLED)
        finally:
            running.cancel()

    async def execute(self, task: Task) -> Result:
        try:
            plugin = self.plugins.get(task.language)
        except UnsupportedLanguage:
            raise SandboxError(f"this worker has no plugin for {task.language!r}") from None
        labels = {"coderund.task": str(task.id)}
        if not task.live:
            return await self.sandbox.execute(plugin, task, labels, self.case_parallel)
        bridge = LiveBridge(self.live, task.id)
        try:
            return await self.sandbox.execute(plugin, task, labels, self.case_parallel, bridge.live())
        finally:
            await bridge.flush()


class Webhooks:
    """Sends finished tasks' results to their callback URLs, from the outbox, at least once: signed
    with the owner's secret, a delivery id to deduplicate by, retried with growing pauses."""

    def __init__(self, outbox: Outbox, tasks: Tasks, users: Users, callbacks: Callbacks, *, backoff_s: float) -> None:
        self.outbox = outbox
        self.tasks = tasks
        self.users = users
        self.callbacks = callbacks
        self.backoff_s = backoff_s

    async def run(self) -> None:
        """Until cancelled: sends what is due, a few at a time."""
        while True:
            try:
                due = await self.outbox.take(WEBHOOK_BATCH)
                await asyncio.gather(*(self.send(delivery) for delivery in due))
                metrics.WEBHOOK_OLDEST.set(await self.outbox.oldest_pending_s())
                if len(due) == WEBHOOK_BATCH:
                    continue  # more are due
            except Unavailable as e:
                log.warning("webhooks: %s", e.message)
            await asyncio.sleep(WEBHOOK_POLL_S)

    async def send(self, delivery: PendingWebhook) -> None:
        task = await self.tasks.get(delivery.task_id, delivery.user_id)
        if task is None or task.result is None:
            await self.outbox.failed(delivery.id, "the task is gone", None)
            return
        body = json.dumps({"task_id": str(task.id), **result_document(task)}).encode()
        secret = await self.users.webhook_secret(delivery.user_id)
        headers = {"Content-Type": "application/json", "User-Agent": "coderund-webhook",
                   "X-Coderund-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
                   "X-Coderund-Delivery": str(delivery.id), "X-Coderund-Timestamp": str(int(time.time())),
                   "X-Coderund-Attempt": str(delivery.attempts + 1)}
        try:
            status = await self.callbacks.post(delivery.url, body, headers)
            error = None if 200 <= status < 300 else f"answered {status}"
        except CallbackFailed as e:
            error = str(e)
        if error is None:
            await self.outbox.delivered(delivery.id)
            metrics.WEBHOOKS.labels("delivered").inc()
            return
        retry_in = self.backoff_s * 3 ** delivery.attempts if delivery.attempts < WEBHOOK_RETRIES else None
        await self.outbox.failed(delivery.id, error, retry_in)
        metrics.WEBHOOKS.labels("retry" if retry_in is not None else "gave_up").inc()
        log.info("webhook %s for task %s: %s; %s", delivery.id, delivery.task_id, error,
                 f"again in {retry_in:.0f} s" if retry_in is not None else "giving up")
