"""The worker: consumes a process's routes and feeds each delivery into the local pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Iterable
from typing import Any

import structlog
from attrs import define, frozen

from ._behaviors import PERMANENT_ERRORS
from ._mediator import Mediator
from ._messages import Message
from ._qos import QoS
from .exceptions import (
    ConfigurationError,
    InProgressError,
    SerializationError,
    TransportError,
)
from .typing import Delivery, Envelope, Subscription, Transport

__all__ = ["Worker", "WorkerHealth", "WorkerState"]

logger = structlog.get_logger("catga.worker")


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@define
class _Counters:
    handled: int = 0
    retried: int = 0
    deferred: int = 0
    dead_lettered: int = 0
    in_flight: int = 0


@frozen
class WorkerHealth:
    """A snapshot for health checks and metrics."""

    state: WorkerState
    routes: tuple[str, ...]
    handled: int
    retried: int
    deferred: int
    dead_lettered: int
    in_flight: int

    @property
    def healthy(self) -> bool:
        """Whether the worker is consuming."""
        return self.state is WorkerState.RUNNING


class Worker:
    """Subscribes to every route this process has handlers for and runs the deliveries.

    Each delivery is decoded through the registry (never anything else), run through
    the same pipeline as an in-process dispatch, and acked only after the handlers
    finished. A failure is nacked with the message's retry backoff until its
    ``max_attempts`` deliveries are used, then dead-lettered with the reason; bad
    input (undecodable bytes, an unknown type, an invalid message) is dead-lettered
    at once. The consumer always goes on.

    Args:
        mediator: whose registry, pipeline and serializer are used.
        transport: where to consume (default: the mediator's).
        group: consumer group; workers sharing it compete for messages.
        concurrency: deliveries handled at once per subscription.
        routes: only these routes (default: all routes with local handlers).
        busy_delay: seconds before a QoS 2 duplicate that is still running elsewhere
            is delivered again.
        keepalive: a delivery still running after this many seconds gets
            ``in_progress()`` (and again every ``keepalive`` seconds), so the broker does
            not hand it to another consumer; keep it well below the transport's ack wait
            or claim idle time. ``None`` turns it off.
    """

    def __init__(
        self,
        mediator: Mediator,
        *,
        transport: Transport | None = None,
        group: str = "catga",
        concurrency: int = 16,
        routes: Iterable[str] | None = None,
        busy_delay: float = 0.5,
        keepalive: float | None = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if keepalive is not None and keepalive <= 0:
            raise ConfigurationError(f"keepalive must be > 0 or None, got {keepalive}")
        transport = transport if transport is not None else mediator.transport
        if transport is None:
            raise ConfigurationError(
                "the worker needs a transport: pass one, or give it to the mediator"
            )
        self.mediator = mediator
        self.transport = transport
        self.group = group
        self.concurrency = concurrency
        self.only = None if routes is None else frozenset(routes)
        self.busy_delay = busy_delay
        self.keepalive = keepalive
        self.state = WorkerState.NEW
        self._subscriptions: list[Subscription] = []
        self._counters = _Counters()
        self._running: dict[Delivery, float] = {}
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Compose every chain (wiring errors surface here) and subscribe.

        Raises:
            ConfigurationError: started twice, or ``routes`` names a route with no handler.
            DependencyError: a handler parameter nothing provides.
        """
        if self.state is not WorkerState.NEW:
            raise ConfigurationError(f"the worker is {self.state.value}; create a new one")
        self.mediator.check()
        local = self.mediator.local_routes()
        missing = (self.only or frozenset()) - local.keys()
        if missing:
            raise ConfigurationError(
                f"no local handler for route(s) {sorted(missing)}: register handlers for the "
                "message types routed there, or drop them from routes="
            )
        self.state = WorkerState.RUNNING
        if self.keepalive is not None:
            self._keeper = asyncio.create_task(self._keep_alive(self.keepalive))
        for route, levels in sorted(local.items()):
            if self.only is None or route in self.only:
                await self._subscribe(route, levels)

    async def _subscribe(self, route: str, levels: set[QoS]) -> None:
        channels = {
            QoS.AT_MOST_ONCE if q == QoS.AT_MOST_ONCE else QoS.AT_LEAST_ONCE for q in levels
        }
        for channel in sorted(channels):
            sub = await self.transport.subscribe(
                route,
                self._on_delivery,
                group=self.group,
                qos=channel,
                concurrency=self.concurrency,
            )
            self._subscriptions.append(sub)

    async def stop(self) -> None:
        """Stop taking deliveries, finish (and settle) those in flight; idempotent."""
        if self.state is WorkerState.STOPPED:
            return
        self.state = WorkerState.STOPPED
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            await sub.aclose()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def health(self) -> WorkerHealth:
        """Return the worker's state and counters."""
        c = self._counters
        return WorkerHealth(
            state=self.state,
            routes=tuple(sorted({s.route for s in self._subscriptions})),
            handled=c.handled,
            retried=c.retried,
            deferred=c.deferred,
            dead_lettered=c.dead_lettered,
            in_flight=c.in_flight,
        )

    async def _on_delivery(self, delivery: Delivery) -> None:
        self._counters.in_flight += 1
        self._running[delivery] = time.monotonic()
        try:
            await self._handle(delivery)
        except TransportError as exc:
            # Settling (or replying) failed: the broker still holds the message and
            # will deliver it again; a QoS 2 handler then answers from the store.
            logger.warning(
                "could not settle a delivery; it will be redelivered",
                message_id=delivery.envelope.message_id,
                error=repr(exc),
            )
        finally:
            self._counters.in_flight -= 1
            del self._running[delivery]

    async def _keep_alive(self, every: float) -> None:
        """Tell the broker about deliveries still running, so none is taken over."""
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            for delivery, since in list(self._running.items()):
                if now - since < every or delivery not in self._running:
                    continue
                self._running[delivery] = now
                try:
                    await delivery.in_progress()
                except Exception as exc:  # noqa: BLE001 - the next tick tries again
                    logger.warning("in_progress failed", error=repr(exc))

    async def _handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        try:
            message_type = self.mediator.registry.type_for(envelope.message_type)
            message = self.mediator.serializer.decode(envelope.body, message_type)
        except SerializationError as exc:
            await self._give_up(delivery, exc, "undecodable")
            return
        try:
            result = await self.mediator.dispatch_delivered(message, delivery)
        except InProgressError:
            self._counters.deferred += 1
            await delivery.nack(self.busy_delay)
        except PERMANENT_ERRORS as exc:
            await self._give_up(delivery, exc, "rejected")
        except Exception as exc:  # noqa: BLE001 - any handler error is settled, never lost
            await self._failed(delivery, message, exc)
        else:
            if envelope.reply_to is not None:
                body = self.mediator.serializer.encode(result)
                await self.transport.reply(envelope, _reply(envelope, body=body))
            await delivery.ack()
            self._counters.handled += 1

    async def _failed(self, delivery: Delivery, message: Message, exc: Exception) -> None:
        policy = type(message).retry or self.mediator.options.retry
        if policy.should_retry(exc, delivery.delivery_count):
            self._counters.retried += 1
            await delivery.nack(policy.delay(delivery.delivery_count))
            return
        await self._give_up(delivery, exc, f"failed after {delivery.delivery_count} deliveries")

    async def _give_up(self, delivery: Delivery, exc: Exception, why: str) -> None:
        envelope = delivery.envelope
        reason = f"{why}: {type(exc).__name__}: {exc}"
        logger.error(
            "dead-lettered",
            message_id=envelope.message_id,
            message_type=envelope.message_type,
            reason=reason,
        )
        if envelope.reply_to is not None:
            error = _reply(envelope, error_type=type(exc).__name__, error_message=str(exc))
            try:
                await self.transport.reply(envelope, error)
            except Exception as reply_exc:  # noqa: BLE001 - the caller will time out instead
                logger.warning(
                    "error reply failed", message_id=envelope.message_id, error=repr(reply_exc)
                )
        await delivery.dead_letter(reason)
        self._counters.dead_lettered += 1


def _reply(request: Envelope, *, body: bytes = b"", **error: Any) -> Envelope:
    return Envelope(
        message_id=request.message_id,
        message_type=request.message_type,
        body=body,
        qos=request.qos,
        correlation_id=request.correlation_id or request.message_id,
        **error,
    )
