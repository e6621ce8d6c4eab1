"""In-memory broker state: a broker in this process with the semantics of Redis streams.

One :class:`InMemoryBroker` is the "server"; every :class:`InMemoryTransport` on it is a
client, like a process talking to Redis or NATS. Semantics per route:

* QoS >= 1 appends to the route's log (the last ``max_queue`` messages are retained)
  and to the queue of every consumer group. A group is created by its first
  ``subscribe`` and, like ``XGROUP CREATE <route> <group> 0``, starts from the beginning
  of the retained log, so messages published before a worker starts are not lost.
  Consumers in one group compete; each group gets every message. When a group holds
  ``max_queue`` unsettled messages (or, with no group yet, the log is full) a durable
  publish waits up to ``publish_timeout`` for room, then raises ``QueueFullError``.
* A delivery stays pending until it is settled. ``nack(delay)``, no settle within
  ``ack_wait`` and a closed subscription all redeliver it with ``delivery_count + 1``;
  past ``max_deliveries`` it is dead-lettered instead. Settling a stale delivery is a no-op.
* QoS 0 goes only to subscribers subscribed at QoS 0 right now (one per group).
* Options are client-side, as with Redis (``MAXLEN`` on ``XADD``, the consumer's
  ``XAUTOCLAIM`` idle time): each transport applies its own to what it publishes and
  consumes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING

import structlog
from attrs import field, frozen, validators

from .exceptions import QueueFullError
from .typing import DeadLetter, Envelope

if TYPE_CHECKING:
    from ._memory_transport import _FanoutSource

__all__ = ["InMemoryBroker", "InMemoryTransportOptions"]

logger = structlog.get_logger(__name__)

# Tokens version an item's state; a delivery holding an older token is stale.
_tokens = itertools.count(1)
_ids = itertools.count(1)

_positive_int = [validators.instance_of(int), validators.ge(1)]


@frozen(kw_only=True)
class InMemoryTransportOptions:
    """Limits and timings of one :class:`InMemoryTransport`.

    Args:
        ack_wait: seconds before an unsettled delivery is redelivered.
        max_deliveries: deliveries before a message is dead-lettered instead.
        max_queue: unsettled messages per route and group; also the retained log.
        publish_timeout: seconds a durable publish waits for room before
            :class:`~catga.exceptions.QueueFullError`.
        dedup_window: seconds a QoS 2 ``message_id`` is remembered per route.
        dedup_max: bound on remembered ids (oldest forgotten first).
        dlq_max: bound on dead letters per route (oldest dropped first).
    """

    ack_wait: float = field(default=30.0, validator=validators.gt(0))
    max_deliveries: int = field(default=5, validator=_positive_int)
    max_queue: int = field(default=10_000, validator=_positive_int)
    publish_timeout: float = field(default=5.0, validator=validators.ge(0))
    dedup_window: float = field(default=120.0, validator=validators.gt(0))
    dedup_max: int = field(default=100_000, validator=_positive_int)
    dlq_max: int = field(default=10_000, validator=_positive_int)


class _Signal:
    """Tasks parked until woken: a condition variable without a lock, usable from callbacks."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                with suppress(ValueError):  # already skipped by a wake_one
                    self._waiters.remove(fut)
            else:  # woken, then cancelled: hand the wake-up on so no item is left waiting
                self.wake_one()
            raise

    def wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        while self._waiters:
            self.wake_one()


class _Item:
    """One message in one group's queue."""

    __slots__ = ("deliveries", "envelope", "holder", "timer", "token")

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.deliveries = 0
        self.token = 0
        self.timer: asyncio.TimerHandle | None = None
        self.holder: dict[_Item, int] | None = None  # the subscription holding it


class _Group:
    """A consumer group: messages ready, in flight or delayed, until settled."""

    def __init__(self, route: _Route, backlog: Iterable[Envelope]) -> None:
        self.route = route
        self.ready = deque(_Item(envelope) for envelope in backlog)
        self.size = len(self.ready)
        self.readable = _Signal()
        self._timed: set[_Item] = set()

    def put(self, envelope: Envelope) -> None:
        self.ready.append(_Item(envelope))
        self.size += 1
        self.readable.wake_one()

    async def take(self, opts: InMemoryTransportOptions) -> _Item:
        while True:
            while self.ready:
                item = self.ready.popleft()
                if item.deliveries >= opts.max_deliveries:
                    reason = f"max deliveries ({opts.max_deliveries}) exceeded"
                    logger.warning(
                        "dead-lettered",
                        route=self.route.name,
                        reason=reason,
                        message_id=item.envelope.message_id,
                    )
                    self._remove(item, reason, opts.dlq_max)
                    continue
                item.deliveries += 1
                item.token = next(_tokens)
                self._schedule(item, opts.ack_wait)
                return item
            await self.readable.wait()

    def ack(self, item: _Item, token: int) -> None:
        if self._settle(item, token):
            self._remove(item)

    def dead_letter(self, item: _Item, token: int, reason: str, dlq_max: int) -> None:
        if self._settle(item, token):
            self._remove(item, reason, dlq_max)

    def nack(self, item: _Item, token: int, delay: float) -> None:
        if self._settle(item, token):
            if delay > 0:
                self._schedule(item, delay)
            else:
                self._requeue(item, item.token)

    def extend(self, item: _Item, token: int, ack_wait: float) -> None:
        if item.token == token:
            self._schedule(item, ack_wait)

    def close(self) -> None:
        for item in list(self._timed):  # delayed or in flight: make it ready now, timer off
            self._requeue(item, item.token)

    def _settle(self, item: _Item, token: int) -> bool:
        if item.token != token:
            return False
        item.token = next(_tokens)
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None
            self._timed.discard(item)
        if item.holder is not None:
            item.holder.pop(item, None)
            item.holder = None
        return True

    def _schedule(self, item: _Item, delay: float) -> None:
        if item.timer is not None:
            item.timer.cancel()
        loop = asyncio.get_running_loop()
        item.timer = loop.call_later(delay, self._requeue, item, item.token)
        self._timed.add(item)

    def _requeue(self, item: _Item, token: int) -> None:
        if self._settle(item, token):
            self.ready.append(item)
            self.readable.wake_one()

    def _remove(self, item: _Item, reason: str | None = None, dlq_max: int = 0) -> None:
        self.size -= 1
        self.route.space.wake_all()
        if reason is not None:
            self.route.dead_letter(item.envelope, reason, item.deliveries, dlq_max)


class _Route:
    """A route's log, consumer groups, QoS 0 subscribers and dead letters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log: deque[Envelope] = deque()
        self.groups: dict[str, _Group] = {}
        self.fanout: dict[str, deque[_FanoutSource]] = {}
        self.dlq: OrderedDict[str, DeadLetter] = OrderedDict()
        self.space = _Signal()

    def has_room(self, max_queue: int) -> bool:
        if self.groups:
            return all(group.size < max_queue for group in self.groups.values())
        return len(self.log) < max_queue

    def append(self, envelope: Envelope, max_queue: int) -> None:
        self.log.append(envelope)
        while len(self.log) > max_queue:
            self.log.popleft()
        for group in self.groups.values():
            group.put(envelope)

    def group(self, name: str) -> _Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group(self, self.log)
        return group

    def dead_letter(self, envelope: Envelope, reason: str, count: int, dlq_max: int) -> None:
        record = DeadLetter(
            id=str(next(_ids)),
            route=self.name,
            envelope=envelope,
            reason=reason,
            delivery_count=count,
            dead_lettered_at=time.time(),
        )
        self.dlq[record.id] = record
        while len(self.dlq) > dlq_max:
            _, dropped = self.dlq.popitem(last=False)
            logger.warning(
                "dead-letter queue full: dropped the oldest",
                route=self.name,
                message_id=dropped.envelope.message_id,
                dlq_max=dlq_max,
            )


class InMemoryBroker:
    """The shared state of in-memory transports: routes, groups, dead letters, inboxes.

    Create one and pass it to several :class:`InMemoryTransport` to make them talk to
    each other like processes sharing a Redis or NATS server.

    Args:
        clock: seconds, monotonic, for the dedup window; tests may pass their own.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._routes: dict[str, _Route] = {}
        self._dedup: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._inboxes: dict[str, asyncio.Future[Envelope]] = {}

    def close(self) -> None:
        """Cancel every timer: messages in flight or delayed are ready again at once."""
        for route in self._routes.values():
            for group in route.groups.values():
                group.close()

    def _route(self, name: str) -> _Route:
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = _Route(name)
        return route

    async def _store(
        self, name: str, envelope: Envelope, opts: InMemoryTransportOptions, *, dedup: bool
    ) -> None:
        route = self._route(name)
        key = (name, envelope.message_id)
        if dedup and self._seen(key):
            return
        if not route.has_room(opts.max_queue):
            await _wait_for_room(route, opts)
            if dedup and self._seen(key):  # a concurrent publish of the same id got in
                return
        if dedup:
            self._remember(key, opts)
        route.append(envelope, opts.max_queue)

    def _seen(self, key: tuple[str, str]) -> bool:
        expires = self._dedup.get(key)
        return expires is not None and expires > self._clock()

    def _remember(self, key: tuple[str, str], opts: InMemoryTransportOptions) -> None:
        now = self._clock()
        self._dedup.pop(key, None)
        self._dedup[key] = now + opts.dedup_window
        while len(self._dedup) > opts.dedup_max or next(iter(self._dedup.values())) <= now:
            self._dedup.popitem(last=False)

    def _fanout(self, name: str, envelope: Envelope) -> None:
        route = self._routes.get(name)
        if route is None:
            return
        for sources in route.fanout.values():
            sources[0].offer(envelope)
            sources.rotate(-1)


async def _wait_for_room(route: _Route, opts: InMemoryTransportOptions) -> None:
    try:
        async with asyncio.timeout(opts.publish_timeout):
            while not route.has_room(opts.max_queue):
                await route.space.wait()
    except TimeoutError:
        raise QueueFullError(
            f"route {route.name!r} held {opts.max_queue} unsettled messages for "
            f"{opts.publish_timeout}s: consumers are behind (or none has subscribed); "
            "add consumers or raise max_queue/publish_timeout"
        ) from None
