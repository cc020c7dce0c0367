"""RabbitMQ: task ids as persistent messages on one durable queue."""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import aiormq
import aiormq.abc
from aiormq import spec

from ..errors import Unavailable

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5
PERSISTENT = 2

Handler = Callable[[uuid.UUID, "Delivery"], Awaitable[None]]
BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


class Delivery:
    """One received message; settle it exactly once."""

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        self.message = message

    @property
    def redelivered(self) -> bool:
        """Whether the broker delivered this message before (to a worker that died, or handed it back)."""
        return bool(self.message.delivery.redelivered)

    async def ack(self) -> None:
        await self.message.channel.basic_ack(self.message.delivery.delivery_tag)

    async def requeue(self) -> None:
        await self.message.channel.basic_nack(self.message.delivery.delivery_tag, requeue=True)


class Queue:
    """One connection per process, opened on first use and again after it drops."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def channel(self) -> aiormq.abc.AbstractChannel:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                if self._connection is None or self._connection.is_closed:
                    self._connection = await asyncio.wait_for(aiormq.connect(self.url), CONNECT_TIMEOUT_S)
                self._channel = await self._connection.channel(publisher_confirms=True)
                await self._channel.queue_declare(self.name, durable=True)
            return self._channel

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = self._channel = None

    async def publish(self, task_id: uuid.UUID) -> None:
        """Returns once the broker has confirmed the message as stored; raises Unavailable if not."""
        try:
            channel = await self.channel()
            confirmation = await asyncio.wait_for(
                channel.basic_publish(
                    str(task_id).encode(),
                    routing_key=self.name,
                    properties=spec.Basic.Properties(delivery_mode=PERSISTENT, content_type="text/plain"),
                ),
                CONNECT_TIMEOUT_S,
            )
        except BROKER_ERRORS as e:
            log.warning("RabbitMQ publish failed: %r", e)
            await self._drop()
            raise Unavailable("The task queue is not answering; try again shortly.") from e
        if not isinstance(confirmation, spec.Basic.Ack):
            raise Unavailable("The task queue refused the task; try again shortly.")

    async def depth(self) -> int:
        try:
            channel = await self.channel()
            declared = await asyncio.wait_for(channel.queue_declare(self.name, passive=True), CONNECT_TIMEOUT_S)
        except BROKER_ERRORS as e:
            await self._drop()
            raise Unavailable("The task queue is not answering.") from e
        return int(declared.message_count or 0)

    async def ping(self) -> None:
        await self.depth()

    async def consume(self, handler: Handler, *, prefetch: int) -> None:
        """Delivers messages to handler until the connection drops (then raises)."""
        channel = await self.channel()
        await channel.basic_qos(prefetch_count=prefetch)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            delivery = Delivery(message)
            try:
                task_id = uuid.UUID(message.body.decode())
            except (UnicodeDecodeError, ValueError):
                log.error("dropping a message that is not a task id: %r", message.body[:100])
                await delivery.ack()
                return
            await handler(task_id, delivery)

        await channel.basic_consume(self.name, on_message, no_ack=False)
        assert self._connection is not None
        await self._connection.closing

    async def _drop(self) -> None:
        """Forget a broken connection so the next call opens a new one."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 2)
            except BROKER_ERRORS:
                pass
