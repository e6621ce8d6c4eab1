"""In-memory transport: a client of an :class:`InMemoryBroker`, like a process of Redis's.

The broker's semantics are described in ``_memory_broker``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol, Self

import msgspec
import structlog
from attrs import validators

from ._memory_broker import (
    InMemoryBroker,
    InMemoryTransportOptions,
    _Group,
    _Item,
    _Route,
    _Signal,
)
from ._qos import QoS
from .exceptions import DeadLetterError, NotConnectedError, RequestTimeoutError
from .typing import DeadLetter, Delivery, DeliveryHandler, Envelope, Subscription

__all__ = ["InMemoryTransport"]

logger = structlog.get_logger(__name__)

# Tokens version an item's state; a delivery holding an older token is stale.
_ids = itertools.count(1)

_positive_int = [validators.instance_of(int), validators.ge(1)]


class _GroupDelivery:
    """A durable delivery; settling it after it went stale does nothing."""

    __slots__ = ("_group", "_item", "_opts", "_token", "delivery_count")

    def __init__(self, group: _Group, item: _Item, opts: InMemoryTransportOptions) -> None:
        self._group, self._item, self._opts = group, item, opts
        self._token = item.token
        self.delivery_count = item.deliveries

    @property
    def envelope(self) -> Envelope:
        return self._item.envelope

    async def ack(self) -> None:
        self._group.ack(self._item, self._token)

    async def nack(self, delay: float = 0.0) -> None:
        self._group.nack(self._item, self._token, delay)

    async def dead_letter(self, reason: str) -> None:
        self._group.dead_letter(self._item, self._token, reason, self._opts.dlq_max)

    async def in_progress(self) -> None:
        self._group.extend(self._item, self._token, self._opts.ack_wait)


class _FanoutDelivery:
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


class _Source(Protocol):
    async def get(self) -> Delivery: ...

    def close(self) -> None: ...


class _GroupSource:
    """One subscription's view of a group; returns what it holds when closed."""

    def __init__(self, group: _Group, opts: InMemoryTransportOptions) -> None:
        self._group, self._opts = group, opts
        self._held: dict[_Item, int] = {}

    async def get(self) -> Delivery:
        item = await self._group.take(self._opts)
        item.holder, self._held[item] = self._held, item.token
        return _GroupDelivery(self._group, item, self._opts)

    def close(self) -> None:
        for item, token in list(self._held.items()):
            self._group.nack(item, token, 0.0)


class _FanoutSource:
    """One QoS 0 subscriber's buffer; drops (with a warning) when the handler is behind."""

    def __init__(self, route: _Route, group: str, max_queue: int) -> None:
        self._route, self._group, self._max = route, group, max_queue
        self._buffer: deque[Envelope] = deque()
        self._readable = _Signal()
        self._dropping = False
        route.fanout.setdefault(group, deque()).append(self)

    def offer(self, envelope: Envelope) -> None:
        if len(self._buffer) >= self._max:
            if not self._dropping:
                logger.warning("QoS 0 subscriber is behind: dropping", max_queue=self._max)
            self._dropping = True
            return
        self._buffer.append(envelope)
        self._readable.wake_one()

    async def get(self) -> Delivery:
        while not self._buffer:
            self._dropping = False
            await self._readable.wait()
        return _FanoutDelivery(self._buffer.popleft())

    def close(self) -> None:
        peers = self._route.fanout[self._group]
        peers.remove(self)
        if not peers:
            del self._route.fanout[self._group]


class _Subscription:
    """Runs a handler on deliveries from a source, at most ``concurrency`` at a time."""

    def __init__(
        self,
        route: str,
        handler: DeliveryHandler,
        source: _Source,
        concurrency: int,
        on_close: Callable[[_Subscription], None],
    ) -> None:
        self._route, self._handler, self._source = route, handler, source
        self._on_close = on_close
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._runner = asyncio.create_task(self._run(), name=f"catga-subscription:{route}")
        self._runner.add_done_callback(self._runner_done)

    @property
    def route(self) -> str:
        """The route consumed."""
        return self._route

    async def aclose(self) -> None:
        """Stop taking deliveries, wait for those in flight, return unsettled ones; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._runner.cancel()
        await asyncio.wait([self._runner])
        in_flight = self._tasks - {asyncio.current_task()}
        if in_flight:
            await asyncio.wait(in_flight)
        self._source.close()
        self._on_close(self)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                delivery = await self._source.get()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._handle(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._handler(delivery)
        except Exception:
            logger.exception(
                "delivery handler raised without settling; nacked",
                route=self._route,
                message_id=delivery.envelope.message_id,
                delivery_count=delivery.delivery_count,
            )
            await delivery.nack()
        finally:
            self._slots.release()

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("subscription stopped", route=self._route, exc_info=task.exception())


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class InMemoryTransport:
    """A :class:`~catga.typing.Transport` over an :class:`InMemoryBroker`.

    Args:
        broker: the broker to share with other transports; a private one when omitted.
        options: this client's limits and timings.
    """

    def __init__(
        self,
        broker: InMemoryBroker | None = None,
        *,
        options: InMemoryTransportOptions | None = None,
    ) -> None:
        self._owns_broker = broker is None
        self._broker = InMemoryBroker() if broker is None else broker
        self._options = InMemoryTransportOptions() if options is None else options
        self._state = _State.UNOPENED
        self._closing = False
        self._subscriptions: set[_Subscription] = set()
        self._inboxes: set[str] = set()

    @property
    def broker(self) -> InMemoryBroker:
        """The broker this transport talks to."""
        return self._broker

    @property
    def options(self) -> InMemoryTransportOptions:
        """This transport's options."""
        return self._options

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Start using the broker (again, after :meth:`aclose`); idempotent."""
        self._state = _State.OPEN

    async def aclose(self) -> None:
        """Close subscriptions (in-flight handlers finish first) and fail waiting requests.

        Idempotent; a call while another is closing returns at once.
        """
        if self._closing:
            return
        self._closing = True
        try:
            await asyncio.gather(*(sub.aclose() for sub in list(self._subscriptions)))
            for inbox in self._inboxes:
                waiter = self._broker._inboxes.pop(inbox, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(NotConnectedError("transport closed before the reply"))
            self._inboxes.clear()
            if self._owns_broker:
                self._broker.close()
        finally:
            self._state, self._closing = _State.CLOSED, False

    async def publish(self, route: str, envelope: Envelope, *, qos: QoS) -> None:
        """Hand an envelope to a route; at QoS >= 1 return once it is stored.

        Args:
            route: where to publish.
            envelope: the message; at QoS 2 its ``message_id`` is deduplicated.
            qos: 0 fire-and-forget to current QoS 0 subscribers; 1 and 2 durable.

        Raises:
            NotConnectedError: not connected.
            QueueFullError: a group's queue stayed full for ``publish_timeout``.
        """
        self._check()
        if qos == QoS.AT_MOST_ONCE:
            self._broker._fanout(route, envelope)
        else:
            await self._broker._store(route, envelope, self._options, dedup=qos >= QoS.EXACTLY_ONCE)

    async def publish_many(self, route: str, envelopes: Sequence[Envelope], *, qos: QoS) -> None:
        """Publish several envelopes, stored in order; raises as :meth:`publish` does."""
        for envelope in envelopes:
            await self.publish(route, envelope, qos=qos)

    async def request(self, route: str, envelope: Envelope, *, timeout: float) -> Envelope:
        """Publish durably with a fresh reply inbox and wait for the reply.

        There is no producer dedup here even at QoS 2: each attempt has its own inbox, so a
        retried request must reach the consumer, whose idempotency store answers it.

        Args:
            route: where the handler's workers consume.
            envelope: the request; its ``reply_to`` is replaced.
            timeout: seconds for storing the request and getting the reply.

        Returns:
            The reply envelope.

        Raises:
            NotConnectedError: not connected, or closed while waiting.
            RequestTimeoutError: no reply within ``timeout`` seconds.
        """
        self._check()
        inbox = f"_inbox.{next(_ids)}"
        reply: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._broker._inboxes[inbox] = reply
        self._inboxes.add(inbox)
        try:
            async with asyncio.timeout(timeout):
                request = msgspec.structs.replace(envelope, reply_to=inbox)
                await self._broker._store(route, request, self._options, dedup=False)
                return await reply
        except TimeoutError:
            raise RequestTimeoutError(envelope.message_id, timeout) from None
        finally:
            self._inboxes.discard(inbox)
            self._broker._inboxes.pop(inbox, None)

    async def reply(self, request: Envelope, reply: Envelope) -> None:
        """Answer a request; dropped when nobody waits for it any more.

        Raises:
            NotConnectedError: not connected.
        """
        self._check()
        waiter = self._broker._inboxes.get(request.reply_to or "")
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def subscribe(
        self, route: str, handler: DeliveryHandler, *, group: str, qos: QoS, concurrency: int = 16
    ) -> Subscription:
        """Start consuming a route; consumers sharing ``group`` compete for messages.

        Args:
            route: the route to consume.
            handler: awaited once per delivery; it should settle the delivery. One that
                raises without settling is logged and nacked.
            group: consumer group; a new durable group starts at the oldest retained message.
            qos: 0 for the fire-and-forget channel, 1 or 2 for the durable one.
            concurrency: handlers running at once.

        Returns:
            The running subscription; ``aclose()`` it to stop.

        Raises:
            NotConnectedError: not connected, or closing.
            ValueError: ``concurrency`` < 1.
        """
        self._check()
        if self._closing:
            raise NotConnectedError("InMemoryTransport is closing: no new subscriptions")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        source: _Source
        target = self._broker._route(route)
        if qos == QoS.AT_MOST_ONCE:
            source = _FanoutSource(target, group, self._options.max_queue)
        else:
            source = _GroupSource(target.group(group), self._options)
        sub = _Subscription(route, handler, source, concurrency, self._subscriptions.discard)
        self._subscriptions.add(sub)
        return sub

    async def dead_letters(self, route: str, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of a route, oldest first.

        Raises:
            NotConnectedError: not connected.
        """
        self._check()
        target = self._broker._routes.get(route)
        return [] if target is None else list(itertools.islice(target.dlq.values(), limit))

    async def replay_dead_letter(self, route: str, dead_letter_id: str) -> None:
        """Publish a dead letter again (durably, with no dedup) and remove it from the DLQ.

        Raises:
            NotConnectedError: not connected.
            DeadLetterError: no such dead letter on the route.
            QueueFullError: the route stayed full; the dead letter is kept.
        """
        self._check()
        target = self._broker._routes.get(route)
        record = None if target is None else target.dlq.get(dead_letter_id)
        if target is None or record is None:
            raise DeadLetterError(f"no dead letter {dead_letter_id!r} on route {route!r}")
        await self._broker._store(route, record.envelope, self._options, dedup=False)
        target.dlq.pop(dead_letter_id, None)

    def _check(self) -> None:
        # Open while closing too: in-flight handlers may still reply and publish.
        if self._state is not _State.OPEN:
            state = "closed" if self._state is _State.CLOSED else "not connected"
            raise NotConnectedError(
                f"InMemoryTransport is {state}: call `await transport.connect()` first "
                "(or use `async with transport:`)"
            )
