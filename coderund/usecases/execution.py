"""The worker side of a task: claim, run in the sandbox, store the result, ack."""
from __future__ import annotations

import asyncio
import logging
import contextlib
import uuid

from .. import metrics
from ..domain import Result, Task, Verdict
from ..errors import Unavailable, UnsupportedLanguage
from ..plugins import Plugins
from ..repository.live import END, LiveChannel
from ..repository.notify import TaskListener
from ..repository.queue import Delivery
from ..repository.tasks import Tasks
from ..sandbox.engine import ImageMissing, SandboxError, SandboxRefused
from ..sandbox.runner import Sandbox
from .live import LiveBridge

log = logging.getLogger(__name__)


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

    async def handle(self, message: uuid.UUID, delivery: Delivery) -> Result | None:
        """Claims a task for a delivered message (the fairest waiting, not always the one the message
        names: Tasks.claim), runs it, stores its result, then acks."""
        try:
            with self.cancels.watch(None) as news:  # from before the claim: a cancel after it is not missed
                task = await self.tasks.claim(message, self.worker_id, redelivered=delivery.redelivered)
            if task is None:
                log.info("message %s: no task waits; dropping it", message)
                await delivery.ack()
                return None
            with self.cancels.watch(task.id) as cancelled:  # no await since the claim: nothing missed between
                if news.is_set():
                    cancelled.set()  # some task was cancelled meanwhile: the run reads whether it was this one
                return await self._handle(task, delivery, cancelled)
        finally:
            self.sandbox.refill()

    async def _handle(self, task: Task, delivery: Delivery, cancelled: asyncio.Event) -> Result | None:
        if task.started_at and task.created_at and task.attempts == 1:
            metrics.QUEUE_WAIT.labels(task.language).observe((task.started_at - task.created_at).total_seconds())
        if task.cancel_requested:
            result = Result(Verdict.CANCELLED)
        elif task.attempts > self.max_attempts:
            log.error("task %s: %d deliveries without a result; giving up", task.id, task.attempts - 1)
            result = Result(Verdict.INTERNAL_ERROR)
        else:
            try:
                result = await self._unless_cancelled(task, cancelled)
            except ImageMissing as e:
                log.error("task %s: %s (language %s)", task.id, e, task.language)
                result = Result(Verdict.INTERNAL_ERROR, stderr=f"coderund: {missing_image_note(e.image, task.language)}\n".encode())
            except SandboxRefused as e:
                log.error("task %s: the engine refused its sandbox: %s", task.id, e)
                result = Result(Verdict.INTERNAL_ERROR, stderr=f"coderund: the container engine refused this task: {e}\n".encode())
            except SandboxError as e:
                if task.attempts < self.max_attempts:
                    log.warning("task %s: platform failure, will retry: %s", task.id, e)
                    await self.tasks.release(task.id)
                    await delivery.requeue()
                    return None
                log.error("task %s: platform failure on the last attempt: %s", task.id, e)
                result = Result(Verdict.INTERNAL_ERROR)
        if await self.tasks.finish(task.id, result):
            metrics.TASKS_FINISHED.labels(task.language, result.verdict.value).inc()
            metrics.TASK_CPU.labels(task.language).inc(result.spent()[0] / 1000)
        if task.live:  # after the result is stored: a reader that sees the mark finds the result
            with contextlib.suppress(Unavailable):
                await self.live.put_output(task.id, END)
        await delivery.ack()
        log.info("task %s: %s", task.id, result.verdict.value)
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
        bridge = LiveBridge(self.live, task.id, task.tty)
        try:
            return await self.sandbox.execute(plugin, task, labels, self.case_parallel, bridge.live())
        finally:
            await bridge.flush()


def missing_image_note(image: str, language: str) -> str:
    """What a task of a language whose image is missing, and /readyz, say: the image, and the fix."""
    return f"the image {image} of language {language} is missing; the operator builds it with `coderund images build {language}`"
