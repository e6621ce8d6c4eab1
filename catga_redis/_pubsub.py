"""Pub/sub: one connection per transport for replies and QoS 0 subscriptions.

QoS 0 is ``PUBLISH``: nothing is stored, a message published while nobody (or a
disconnected subscriber) listens is gone. Pub/sub broadcasts, but consumers of one
group compete, so each subscriber first claims the message for its group with
``SET {prefix}:q0:{group}:{message_id} NX PX``: the one that set it handles it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from catga.exceptions import SerializationError
from catga.typing import DeliveryHandler, Envelope

from . import _codec
from ._config import RedisConfig
from ._runner import Backoff, HandlerPool
from .exceptions import RedisTimeoutError, map_redis_errors

__all__ = ["FanoutSubscription", "PubSubHub"]

logger = structlog.get_logger(__name__)

Listener = Callable[[bytes], None]

_SUBSCRIBE_TIMEOUT = 5.0
_BUFFER_MAX = 10_000


class PubSubHub:
    """Reads one pub/sub connection and hands each message to its channel's listeners."""

    def __init__(self, client: Redis, reconnect_max: float) -> None:
        self._pubsub: PubSub = client.pubsub()
        self._listeners: dict[bytes, list[Listener]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None

    async def listen(self, channel: str, listener: Listener) -> None:
        """Subscribe ``listener`` to ``channel``; returns once Redis confirmed it.

        Raises:
            RedisTransportError: Redis refused or did not confirm in time.
        """
        name = channel.encode()
        listeners = self._listeners.setdefault(name, [])
        listeners.append(listener)
        if len(listeners) > 1:
            pending = self._confirmed.get(name)
            if pending is not None:  # a concurrent first subscribe is still unconfirmed
                await asyncio.shield(pending)
            return
        confirmed = self._confirmed[name] = asyncio.get_running_loop().create_future()
        try:
            with map_redis_errors(what=f"SUBSCRIBE {channel}"):
                await self._pubsub.subscribe(name)
            if self._task is None:
                self._task = asyncio.create_task(self._read(), name="catga-redis-pubsub")
            try:
                async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
                    await confirmed
            except TimeoutError:
                raise RedisTimeoutError(f"SUBSCRIBE {channel} was not confirmed") from None
        except BaseException:
            self._listeners.pop(name, None)
            raise
        finally:
            self._confirmed.pop(name, None)

    async def forget(self, channel: str, listener: Listener) -> None:
        """Unsubscribe ``listener``; the channel too once nobody listens."""
        name = channel.encode()
        listeners = self._listeners.get(name, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners and self._listeners.pop(name, None) is not None:
            try:
                with map_redis_errors(what=f"UNSUBSCRIBE {channel}"):
                    await self._pubsub.unsubscribe(name)
            except Exception as exc:  # noqa: BLE001 - the connection closes soon anyway
                logger.debug("unsubscribe failed", channel=channel, error=repr(exc))

    async def aclose(self) -> None:
        """Stop reading and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _read(self) -> None:
        backoff = Backoff(self._reconnect_max)
        while True:
            try:
                with map_redis_errors(what="pub/sub read"):
                    message = await self._pubsub.get_message(timeout=None)
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - redis-py resubscribes on reconnect
                logger.warning("pub/sub connection failed; reconnecting", error=repr(exc))
                await backoff.sleep()
                continue
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if message["type"] == "subscribe":
            waiter = self._confirmed.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif message["type"] == "message":
            for listener in list(self._listeners.get(channel, ())):
                listener(message["data"])


class FanoutDelivery:
    """A QoS 0 delivery: nothing to settle."""

    __slots__ = ("envelope",)
    delivery_count = 1

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    async def ack(self) -> None:
        pass

    async def nack(self, delay: float = 0.0) -> None:
        pass

    async def dead_letter(self, reason: str) -> None:
        pass

    async def in_progress(self) -> None:
        pass


class FanoutSubscription:
    """A QoS 0 consumer: buffers messages, claims a batch for the group, runs the winners."""

    def __init__(
        self,
        *,
        hub: PubSubHub,
        client: Redis,
        config: RedisConfig,
        route: str,
        group: str,
        handler: DeliveryHandler,
        concurrency: int,
        on_close: Callable[[Any], None],
    ) -> None:
        self._hub, self._client, self._config = hub, client, config
        self._route = route
        self._channel = f"{config.prefix}:{route}:q0"
        self._claim_prefix = f"{config.prefix}:q0:{group}:"
        self._pool = HandlerPool(route, handler, concurrency)
        self._buffer: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._dropping = False
        self._on_close = on_close
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def route(self) -> str:
        """The route consumed."""
        return self._route

    async def start(self) -> None:
        """Subscribe (confirmed by Redis) and start handling."""
        await self._hub.listen(self._channel, self._offer)
        self._task = asyncio.create_task(self._run(), name=f"catga-redis-q0:{self._route}")

    async def aclose(self) -> None:
        """Unsubscribe, drop what is buffered, wait for running handlers; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._hub.forget(self._channel, self._offer)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        await self._pool.wait()
        self._on_close(self)

    def _offer(self, data: bytes) -> None:
        if len(self._buffer) >= _BUFFER_MAX:
            if not self._dropping:
                logger.warning("QoS 0 subscriber is behind: dropping", route=self._route)
            self._dropping = True
            return
        self._buffer.append(data)
        self._readable.set()

    async def _run(self) -> None:
        slots = self._pool.slots
        backoff = Backoff(self._config.reconnect_max)
        while True:
            while not self._buffer:
                self._dropping = False
                self._readable.clear()
                await self._readable.wait()
            await slots.wait()
            batch = [self._buffer.popleft() for _ in range(min(slots.free, len(self._buffer)))]
            try:
                won = await self._claim([e for e in map(self._decode, batch) if e is not None])
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - at most once: this batch is lost
                logger.warning("QoS 0 claim failed: batch dropped", error=repr(exc))
                await backoff.sleep()
                continue
            for envelope in won:
                slots.take(1)
                self._pool.start(FanoutDelivery(envelope))

    def _decode(self, data: bytes) -> Envelope | None:
        try:
            return _codec.decode(data)
        except SerializationError as exc:
            logger.warning("undecodable QoS 0 message dropped", route=self._route, error=str(exc))
            return None

    async def _claim(self, envelopes: list[Envelope]) -> list[Envelope]:
        if not envelopes:
            return []
        ttl = self._config.ms(self._config.q0_claim_ttl)
        with map_redis_errors(what="QoS 0 claim"):
            async with self._client.pipeline(transaction=False) as pipe:
                for envelope in envelopes:
                    pipe.set(self._claim_prefix + envelope.message_id, b"1", nx=True, px=ttl)
                won = await pipe.execute()
        return [envelope for envelope, ok in zip(envelopes, won, strict=True) if ok]
