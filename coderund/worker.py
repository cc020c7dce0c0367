"""The worker role: consume task ids, run them, keep a heartbeat, drain on stop."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid

from . import metrics
from .errors import Unavailable
from .repository.queue import BROKER_ERRORS, Delivery, Queue
from .repository.tasks import UNPUBLISHED_AFTER_S
from .repository.workers import Workers
from .sandbox.runner import Sandbox
from .usecases import Executor, SandboxHost
from .usecases.sandboxes import PLACE_TIMEOUT_S

log = logging.getLogger(__name__)
HEARTBEAT_S = 10
LEASE_S = 3 * HEARTBEAT_S  # a worker silent for this long is taken for dead
RECONNECT_MAX_S = 30
RETRY_DELAY_S = 2  # before handing back a task whose storage was briefly unreachable


class Worker:
    def __init__(self, *, queue: Queue, executor: Executor, workers: Workers, sandbox: Sandbox, concurrency: int,
                 host: SandboxHost, retention_days: int = 0) -> None:
        self.retention_days = retention_days
        self.host = host  # the stateful sandboxes this worker hosts
        self.queue = queue
        self.executor = executor
        self.workers = workers
        self.sandbox = sandbox
        self.concurrency = concurrency
        self.id = executor.worker_id
        self.running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @staticmethod
    def new_id() -> str:
        return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        """Runs until stop(); reconnects to the broker with backoff when it drops."""
        metrics.CONCURRENCY.set(self.concurrency)
        # Alive before the first claim: a sweeper must never take a new worker's task for an orphan.
        with contextlib.suppress(Unavailable):
            await self.workers.heartbeat(self.id, socket.gethostname())
        heartbeat = asyncio.create_task(self._heartbeat())
        hosting = asyncio.create_task(self.host.run())
        delay = 1.0
        try:
            while not self._stopping.is_set():
                # Twice the slots: the next tasks are claimed (each delivery claims the fairest waiting
                # task) while the slots are busy, and the sandbox's fair gate shares the slots among them.
                consuming = asyncio.create_task(self.queue.consume(self._on_task, prefetch=2 * self.concurrency))
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if self._stopping.is_set():
                    consuming.cancel()
                    break
                try:
                    consuming.result()
                    delay = 1.0
                # A consume whose connection is closed under it ends cancelled; this loop's own
                # cancellation arrives at the wait above, never here.
                except (*BROKER_ERRORS, asyncio.CancelledError) as e:
                    log.warning("broker connection lost (%r); reconnecting in %.0f s", e, delay)
                    await self.queue.close()
                    await asyncio.wait({asyncio.create_task(self._stopping.wait())}, timeout=delay)
                    delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            heartbeat.cancel()
            hosting.cancel()

    def stop(self) -> None:
        self._stopping.set()

    async def drain(self, timeout: float) -> None:
        """Lets running tasks finish; after timeout, cancels them so the broker hands them to another worker."""
        if self.running:
            log.info("waiting up to %.0f s for %d running task(s)", timeout, len(self.running))
            done, pending = await asyncio.wait(set(self.running), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.queue.close()  # unacked messages go back to the queue
        await self.host.close()  # its sandboxes' files persisted, for any worker to restore
        try:
            await self.workers.forget_worker(self.id)
        except Unavailable:
            pass

    async def _on_task(self, message: uuid.UUID, delivery: Delivery) -> None:
        if self._stopping.is_set():
            return  # left unacked: the broker redelivers it when our connection closes
        current = asyncio.current_task()
        assert current is not None
        self.running.add(current)
        metrics.IN_FLIGHT.inc()
        try:
            await self.executor.handle(message, delivery)
        except Unavailable as e:
            log.warning("message %s: %s; handing it back", message, e.message)
            await asyncio.sleep(RETRY_DELAY_S)
            await delivery.requeue()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("message %s: unexpected failure; handing it back", message)
            await delivery.requeue()
        finally:
            self.running.discard(current)
            metrics.IN_FLIGHT.dec()

    async def _heartbeat(self) -> None:
        """Say we live; clear up after workers that do not: their containers, and their tasks."""
        host = socket.gethostname()
        while True:
            try:
                await self.workers.heartbeat(self.id, host)
                await self._remove_leftovers()
                await self._recover()
                if self.retention_days and (deleted := await self.executor.tasks.delete_expired(self.retention_days)):
                    log.info("deleted %d task(s) finished more than %d days ago", deleted, self.retention_days)
            except Exception as e:  # noqa: BLE001 - the heartbeat must outlive outages
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(HEARTBEAT_S)

    async def _remove_leftovers(self) -> None:
        """Removes the containers of workers that died before their cleanup ran."""
        engine = self.sandbox.engine
        owners = await engine.call(engine.owners)
        # Asked after listing: a container exists only after its worker's first heartbeat, so a
        # worker that started a moment ago is never taken for dead.
        live = await self.workers.live_workers(LEASE_S) | {self.id}
        if dead := [container for container, worker in owners.items() if worker not in live]:
            await engine.remove_all(dead)
            log.info("removed %d container(s) left by dead workers", len(dead))

    async def _recover(self) -> None:
        """Publishes again what a dead worker held or a dying API never got confirmed; the claim
        and the finish guard make a duplicate harmless."""
        tasks = self.executor.tasks
        live = await self.workers.live_workers(LEASE_S) | {self.id}
        for row in await self.host.store.end_lost(live, PLACE_TIMEOUT_S + LEASE_S):
            log.warning("sandbox %s: its worker is gone; %s", row.id,
                        "ended" if row.state == "ended" else "back to its last persisted point")
        for task_id in await tasks.requeue_orphans(LEASE_S, UNPUBLISHED_AFTER_S):
            await self.queue.publish(task_id)
            await tasks.mark_published(task_id)
            log.warning("task %s: orphaned; published again", task_id)
