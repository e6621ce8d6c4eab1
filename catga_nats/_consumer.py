"""Subscriptions: a pull loop over a durable consumer (QoS >= 1), a queue group (QoS 0)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from catga.exceptions import SerializationError
from catga.typing import Delivery, DeliveryHandler, Envelope

from . import _wire
from .exceptions import translate_errors

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription as NatsSubscription

__all__ = ["DurableDelivery", "FireDelivery", "FireSubscription", "PullSubscription"]

logger = structlog.get_logger(__name__)

DeadLetterWriter = Callable[[str, Msg, str, int], Awaitable[None]]
Binder = Callable[[], Awaitable[tuple[str, str]]]

_HEARTBEATS = 4  # heartbeats per pull request
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


class DurableDelivery:
    """A JetStream delivery; settling it twice, or after the subscription closed, is a no-op."""

    __slots__ = ("_msg", "_owner", "_settled", "delivery_count", "envelope")

    def __init__(self, msg: Msg, envelope: Envelope, count: int, owner: PullSubscription) -> None:
        self._msg, self._owner = msg, owner
        self.envelope = envelope
        self.delivery_count = count
        self._settled = False

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._owner.unsettled.discard(self)
        return True

    async def ack(self) -> None:
        """Done: the server never delivers it again (to this group)."""
        if self._settle():
            with translate_errors("ack"):
                await self._msg.ack()

    async def nack(self, delay: float = 0.0) -> None:
        """Failed: the server delivers it again after ``delay`` seconds."""
        if self._settle():
            with translate_errors("nak"):
                await self._msg.nak(delay=delay if delay > 0 else None)

    async def dead_letter(self, reason: str) -> None:
        """Write it to the route's dead-letter stream with ``reason``, then terminate it.

        If writing fails the delivery is unsettled again (so it can still be nacked, or
        is redelivered after ``ack_wait``) and the error is raised.
        """
        if self._settle():
            try:
                await self._owner.dead_letter(self._msg, reason, self.delivery_count)
            except BaseException:
                self._settled = False
                self._owner.unsettled.add(self)
                raise

    async def in_progress(self) -> None:
        """Push the redelivery deadline back by ``ack_wait``."""
        if not self._settled:
            with translate_errors("in_progress"):
                await self._msg.in_progress()


class FireDelivery:
    """A QoS 0 delivery: nothing to settle."""

    __slots__ = ("envelope",)
    delivery_count = 1

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    async def ack(self) -> None:
        """No-op at QoS 0."""

    async def nack(self, delay: float = 0.0) -> None:
        """No-op at QoS 0."""

    async def dead_letter(self, reason: str) -> None:
        """No-op at QoS 0."""

    async def in_progress(self) -> None:
        """No-op at QoS 0."""


class _Slots:
    """Free handler slots: the pull loop never asks for more messages than this."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._freed = asyncio.Event()
        self._freed.set()

    def take(self) -> None:
        self.free -= 1
        if self.free <= 0:
            self._freed.clear()

    def give(self) -> None:
        self.free += 1
        self._freed.set()

    async def wait(self) -> int:
        await self._freed.wait()
        return self.free


class _Runner:
    """Runs deliveries of one subscription, at most ``concurrency`` at once.

    Work is queued and taken by runner tasks that each handle one delivery after
    another; a runner that starts an item while more are queued starts another
    runner (up to ``concurrency``). So a slow handler does not hold the queue up, and
    a burst of quick ones costs a task per runner, not one per message.
    """

    def __init__(self, route: str, handler: DeliveryHandler, concurrency: int) -> None:
        self._route, self._handler = route, handler
        self._concurrency = concurrency
        self.slots = _Slots(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self._queue: deque[tuple[Callable[[Any], Awaitable[None]], Any]] = deque()
        self._runners = 0

    @property
    def route(self) -> str:
        """The route consumed."""
        return self._route

    def spawn(self, work: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        self.slots.take()
        self._queue.append((work, arg))
        if not self._runners:
            self._start_runner()

    def _start_runner(self) -> None:
        # Counted here and uncounted in the same step as the runner sees the queue
        # empty, so an item queued in between always finds a runner.
        self._runners += 1
        task = asyncio.get_running_loop().create_task(self._drain_queue())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain_queue(self) -> None:
        try:
            while self._queue:
                work, arg = self._queue.popleft()
                if self._queue and self._runners < self._concurrency:
                    self._start_runner()
                try:
                    await work(arg)
                except Exception:
                    logger.exception("delivery task failed", route=self._route)
                finally:
                    self.slots.give()
                    self._item_done()
        finally:
            self._runners -= 1

    def _item_done(self) -> None:
        """Called after each item; subclasses wake their loops."""

    async def run(self, delivery: Delivery) -> None:
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

    async def drain(self) -> None:
        while True:
            in_flight = self.tasks - {asyncio.current_task()}
            if not in_flight:
                return
            await asyncio.wait(in_flight)


class _Pull:
    """One pull request: ``batch`` credits until the server ends it or it expires."""

    __slots__ = ("credits", "deadline", "heard")

    def __init__(self, batch: int, deadline: float, now: float) -> None:
        self.credits, self.deadline, self.heard = batch, deadline, now


class PullSubscription(_Runner):
    """Pulls from a durable consumer into at most ``concurrency`` handler tasks.

    Pull requests go out with their own reply subject under one inbox subscription, so
    every message, heartbeat and status is matched to its request, and nothing asks for
    more than the free handler slots. A request that hears nothing (no message, no
    heartbeat) is a dead pull (nats.py #504: pulls that stop after a server restart):
    the consumer is checked (re-created if gone) and a fresh inbox subscribed, after a
    bounded, jittered backoff.
    """

    def __init__(
        self,
        route: str,
        handler: DeliveryHandler,
        concurrency: int,
        *,
        client: Client,
        bind: Binder,
        dead_letter: DeadLetterWriter,
        max_deliver: int,
        batch: int,
        timeout: float,
    ) -> None:
        super().__init__(route, handler, concurrency)
        self._client, self._bind, self._write_dead_letter = client, bind, dead_letter
        self._max_deliver, self._batch, self._timeout = max_deliver, batch, timeout
        self._threshold = max(1, min(batch, concurrency) // 2)
        self.unsettled: set[DurableDelivery] = set()
        self._pulls: dict[str, _Pull] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._sub: NatsSubscription | None = None
        self._next_subject = ""
        self._inbox = ""
        self._closed = False
        self._loop: asyncio.Task[None] | None = None
        self.rebinds = 0

    @property
    def _credits(self) -> int:
        return sum(p.credits for p in self._pulls.values())

    async def start(self) -> None:
        """Bind to the consumer (errors surface here), then start pulling."""
        await self._subscribe()
        self._loop = asyncio.create_task(self._run(), name=f"catga-nats-pull:{self.route}")

    async def aclose(self) -> None:
        """Stop pulling, wait for running handlers, hand unsettled messages back; idempotent.

        Requests already sent are let expire (at most ``fetch_timeout``) while subscribed:
        the server cannot cancel a pull request, and one left behind a dead inbox would
        swallow a nak'ed message and deliver it again uncounted.
        """
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        await self.drain()
        # Back after our requests have expired, so they come to another consumer.
        delay = self._requests_left()
        for delivery in list(self.unsettled):
            with contextlib.suppress(Exception):
                await delivery.nack(delay)
        if self._loop is not None:
            await asyncio.wait([self._loop])
        await self._unsubscribe()

    def _requests_left(self) -> float:
        if not self._pulls:
            return 0.0
        now = asyncio.get_running_loop().time()
        grace = self._timeout / _HEARTBEATS * 2
        return max(p.deadline for p in self._pulls.values()) - now + grace

    async def dead_letter(self, msg: Msg, reason: str, count: int) -> None:
        """Write ``msg`` to the dead-letter stream, then ``term`` it."""
        await self._write_dead_letter(self.route, msg, reason, count)
        with translate_errors("term"):
            await msg.term()

    async def _subscribe(self) -> None:
        durable = await self._bind()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{durable[0]}.{durable[1]}"
        self._inbox = self._client.new_inbox()
        self._pulls.clear()
        self._sub = await self._client.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        self._pulls.clear()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = _BACKOFF_FIRST
        while not self._closed or self._pulls:
            try:
                if self._sub is None:
                    if self._closed:
                        return
                    await self._subscribe()
                    self.rebinds += 1
                    logger.info("pull subscription re-created", route=self.route)
                if self._expire(loop.time()):
                    logger.warning("pull heard nothing; re-subscribing", route=self.route)
                    await self._unsubscribe()
                    continue
                if not self._closed:
                    await self._pull(loop.time())
                delay = _BACKOFF_FIRST
                await self._wait(loop)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any error
                logger.warning("pull failed; retrying", route=self.route, error=repr(exc))
                await self._unsubscribe()
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _pull(self, now: float) -> None:
        want = min(self.slots.free - self._credits, self._batch)
        if want <= 0 or (self._pulls and want < self._threshold):
            return
        pull_id = str(next(self._ids))
        self._pulls[pull_id] = _Pull(want, now + self._timeout, now)
        request = {
            "batch": want,
            "expires": int(self._timeout * 1e9),
            "idle_heartbeat": int(self._timeout / _HEARTBEATS * 1e9),
        }
        await self._client.publish(
            self._next_subject, json.dumps(request).encode(), reply=f"{self._inbox}.{pull_id}"
        )

    def _expire(self, now: float) -> bool:
        """Drop pulls past their deadline; ``True`` if one of them never heard a thing."""
        dead = False
        grace = self._timeout / _HEARTBEATS * 2
        for pull_id, pull in list(self._pulls.items()):
            if now > pull.deadline + grace:
                del self._pulls[pull_id]
            elif now - pull.heard > grace and self._client.is_connected:
                dead = True
        return dead

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        self._changed.clear()
        if self._closed and not self._pulls:
            return
        tick = self._timeout / _HEARTBEATS
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(tick):
                await self._changed.wait()

    async def _on_msg(self, msg: Msg) -> None:
        now = asyncio.get_running_loop().time()
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:  # statuses come on the request's own reply subject
            pull = self._pulls.get(msg.subject.rpartition(".")[2])
            if pull is not None:
                pull.heard = now
                if status != "100":  # 404/408/409: this request is over
                    self._pulls.pop(msg.subject.rpartition(".")[2], None)
                    self._changed.set()
            return
        # Messages keep their stream subject; the server fills requests oldest first.
        for pull_id, pull in self._pulls.items():
            pull.credits -= 1
            pull.heard = now
            if pull.credits <= 0:
                del self._pulls[pull_id]
            break
        if self._closed:  # arrived while closing: back once our requests have expired
            with contextlib.suppress(Exception):
                await msg.nak(delay=self._requests_left())
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Msg) -> None:
        try:
            count = msg.metadata.num_delivered
        except Exception:  # noqa: BLE001 - not a JetStream delivery: nothing to settle
            logger.warning("not a JetStream message on a pull inbox; dropped", route=self.route)
            return
        if count > self._max_deliver:
            reason = f"max deliveries ({self._max_deliver}) exceeded"
            self.spawn(self._give_up, (msg, reason, count - 1))
            return
        try:
            envelope = _wire.decode(msg.data)
        except SerializationError as exc:
            self.spawn(self._give_up, (msg, f"undecodable: {exc}", count))
            return
        delivery = DurableDelivery(msg, envelope, count, self)
        self.unsettled.add(delivery)
        self.spawn(self.run, delivery)

    def _item_done(self) -> None:
        self._changed.set()

    async def _give_up(self, item: tuple[Msg, str, int]) -> None:
        msg, reason, count = item
        logger.warning("dead-lettered by the consumer", route=self.route, reason=reason)
        await self.dead_letter(msg, reason, count)


class FireSubscription(_Runner):
    """QoS 0: a core NATS queue-group subscription; one member of a group gets each message."""

    def __init__(self, route: str, handler: DeliveryHandler, concurrency: int) -> None:
        super().__init__(route, handler, concurrency)
        self._sub: NatsSubscription | None = None
        self._closed = False

    async def start(self, subscribe: Callable[..., Awaitable[Any]]) -> None:
        """Subscribe with ``subscribe(cb=...)``."""
        self._sub = await subscribe(cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            envelope = _wire.decode(msg.data)
        except SerializationError as exc:
            logger.warning("QoS 0 message dropped", route=self.route, reason=str(exc))
            return
        if self.slots.free <= 0:
            await self.slots.wait()
        self.spawn(self.run, FireDelivery(envelope))

    async def aclose(self) -> None:
        """Unsubscribe, then wait for running handlers; idempotent."""
        if self._closed:
            return
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.drain()
