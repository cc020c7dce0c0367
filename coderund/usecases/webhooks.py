"""Webhooks: finished tasks' results sent to their callback URLs from the outbox."""
from __future__ import annotations

import asyncio
import logging
import hashlib
import hmac
import json
import time

from .. import compat, metrics
from ..domain import result_document
from ..errors import Unavailable
from ..repository.callbacks import CallbackFailed, Callbacks
from ..plugins import Plugins
from ..repository.outbox import Outbox, PendingWebhook
from ..repository.tasks import Tasks
from ..repository.users import Users

log = logging.getLogger(__name__)

WEBHOOK_BATCH = 10  # deliveries sent at once by one process
WEBHOOK_POLL_S = 1  # how often the outbox is looked at when it had nothing due
WEBHOOK_RETRIES = 5  # after the first attempt; with pauses growing 3 times each, ~10 minutes at 5 s


class Webhooks:
    """Sends finished tasks' results to their callback URLs, from the outbox, at least once: signed
    with the owner's secret, a delivery id to deduplicate by, retried with growing pauses."""

    def __init__(self, outbox: Outbox, tasks: Tasks, users: Users, callbacks: Callbacks, plugins: Plugins, *,
                 backoff_s: float) -> None:
        self.plugins = plugins
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
        # A task from a foreign API (Judge0) is told in that API's terms; signed all the same.
        method, body = compat.webhook(task, self.plugins) or (
            "POST", json.dumps({"task_id": str(task.id), **result_document(task)}).encode())
        secret = await self.users.webhook_secret(delivery.user_id)
        headers = {"Content-Type": "application/json", "User-Agent": "coderund-webhook",
                   "X-Coderund-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
                   "X-Coderund-Delivery": str(delivery.id), "X-Coderund-Timestamp": str(int(time.time())),
                   "X-Coderund-Attempt": str(delivery.attempts + 1)}
        try:
            status = await self.callbacks.send(method, delivery.url, body, headers)
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
