"""The message bus between nodes: publish bytes to a channel, subscribe to channels.

LiveKit's psrpc runs over Redis ``PUBLISH``/``SUBSCRIBE``; so does :class:`RedisBus` (also
against the redis-server of ``--workers``). :class:`LocalBus` is the in-process bus of a
single node and of tests. Redis delivers a channel's messages in the order one connection
published them; publishers that need order publish from one task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: Messages a subscriber may fall behind by before it is cut off (a relay whose consumer is
#: stuck must not grow without bound; LiveKit's psrpc stream buffer is 1000).
SUBSCRIPTION_QUEUE = 4096
#: Pause between reconnect attempts while Redis is unreachable.
RECONNECT_S = 0.5


class BusClosedError(Exception):
    """The subscription ended: closed, overflowed, or the bus shut down."""


class Subscription:
    """One consumer's messages on one channel."""

    def __init__(self, channel: str, bus: MessageBus) -> None:
        self.channel = channel
        self._bus = bus
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(SUBSCRIPTION_QUEUE)
        self.closed = False

    def deliver(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            logger.warning(
                "subscriber of %s fell %d messages behind; cut off",
                self.channel,
                SUBSCRIPTION_QUEUE,
            )
            self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            # Make room for the end marker even when full.
            while self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def get(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            raise BusClosedError(self.channel)
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.get()
            except BusClosedError:
                return

    async def close(self) -> None:
        self._end()
        await self._bus.unsubscribe(self)


class MessageBus(Protocol):
    async def publish(self, channel: str, data: bytes) -> None: ...
    async def subscribe(self, channel: str) -> Subscription: ...
    async def unsubscribe(self, subscription: Subscription) -> None: ...
    async def close(self) -> None: ...


class _Fanout:
    """Subscriptions by channel, shared by both buses."""

    def __init__(self) -> None:
        self.by_channel: dict[str, set[Subscription]] = {}

    def add(self, subscription: Subscription) -> bool:
        """True when this is the channel's first subscriber."""
        subscribers = self.by_channel.setdefault(subscription.channel, set())
        subscribers.add(subscription)
        return len(subscribers) == 1

    def remove(self, subscription: Subscription) -> bool:
        """True when the channel has no subscriber left."""
        subscribers = self.by_channel.get(subscription.channel)
        if subscribers is None:
            return False
        subscribers.discard(subscription)
        if subscribers:
            return False
        del self.by_channel[subscription.channel]
        return True

    def deliver(self, channel: str, data: bytes) -> None:
        for subscription in list(self.by_channel.get(channel, ())):
            subscription.deliver(data)

    def end_all(self) -> None:
        for subscribers in self.by_channel.values():
            for subscription in subscribers:
                subscription._end()
        self.by_channel.clear()


class LocalBus:
    """Channels inside this process."""

    def __init__(self) -> None:
        self._fanout = _Fanout()

    async def publish(self, channel: str, data: bytes) -> None:
        self._fanout.deliver(channel, data)

    async def subscribe(self, channel: str) -> Subscription:
        subscription = Subscription(channel, self)
        self._fanout.add(subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self._fanout.remove(subscription)

    async def close(self) -> None:
        self._fanout.end_all()


class RedisBus:
    """Channels over Redis pub/sub: one subscriber connection per node, read by one task.

    When Redis goes away the reader keeps retrying; redis-py re-subscribes every channel when
    its connection comes back. Messages published meanwhile are lost, as with LiveKit's bus.
    """

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub: PubSub = client.pubsub()
        self._fanout = _Fanout()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def publish(self, channel: str, data: bytes) -> None:
        await self._client.publish(channel, data)

    async def subscribe(self, channel: str) -> Subscription:
        subscription = Subscription(channel, self)
        async with self._lock:
            if self._fanout.add(subscription):
                await self._pubsub.subscribe(channel)
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(
                    self._read(), name="redis-bus-reader"
                )
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        async with self._lock:
            if self._fanout.remove(subscription):
                try:
                    await self._pubsub.unsubscribe(subscription.channel)
                except RedisError as exc:
                    logger.debug("unsubscribe %s failed: %s", subscription.channel, exc)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except (RedisError, OSError) as exc:
                logger.warning("message bus: %s; retrying", exc)
                await asyncio.sleep(RECONNECT_S)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            self._fanout.deliver(channel, message["data"])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fanout.end_all()
        await self._pubsub.aclose()
