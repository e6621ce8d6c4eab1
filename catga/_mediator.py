"""The mediator: ``send`` a command to its handler, ``publish`` an event to all of its handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import structlog

from ._chains import BehaviorSpec, Chains, Order, Plan, PlanBuilder
from ._dead_letters import DeadLetterEntry, InMemoryDeadLetterQueue
from ._idempotency import LeaseKeeper
from ._memory_store import InMemoryIdempotencyStore
from ._messages import Command, Event, Message
from ._options import CatgaOptions
from ._pipeline import Context, NoResolver, Resolver
from ._qos import QoS
from ._registry import HandlerRegistry
from ._serializer import JsonSerializer
from .exceptions import (
    CatgaError,
    ConfigurationError,
    HandlerNotFoundError,
    InProgressError,
    MessageKindError,
    PublishError,
    RemoteHandlerError,
)
from .typing import Behavior, Delivery, Envelope, IdempotencyStore, Serializer, Transport

__all__ = ["Mediator"]

R = TypeVar("R")
logger = structlog.get_logger("catga")


class Mediator:
    """Dispatches messages through the pipeline to local handlers, or to a transport.

    Args:
        registry: the handlers (and message types) this mediator knows.
        options: QoS default, retry, timeouts, routes.
        store: idempotency store for QoS 2 (default: in memory).
        transport: where routed message types go (required if ``options.routes`` is set).
        serializer: wire format for routed messages and stored results (default: JSON).
        dead_letters: the in-process dead-letter queue (default: a new bounded one).
        resolver: supplies handler parameters after the message (default: none).
        behaviors: user behaviours for every message type, at ``Order.USER``.
    """

    def __init__(
        self,
        registry: HandlerRegistry | None = None,
        *,
        options: CatgaOptions | None = None,
        store: IdempotencyStore | None = None,
        transport: Transport | None = None,
        serializer: Serializer | None = None,
        dead_letters: InMemoryDeadLetterQueue | None = None,
        resolver: Resolver | None = None,
        behaviors: Sequence[Behavior] = (),
    ) -> None:
        self.registry = registry if registry is not None else HandlerRegistry()
        self.options = options if options is not None else CatgaOptions()
        if self.options.routes and transport is None:
            raise ConfigurationError(
                "CatgaOptions.routes is set but the mediator has no transport: pass "
                "transport=InMemoryTransport() (or a Redis/NATS one), or remove the routes"
            )
        self.store = store if store is not None else InMemoryIdempotencyStore()
        self.transport = transport
        self.serializer = serializer if serializer is not None else JsonSerializer()
        self.dead_letters = (
            dead_letters
            if dead_letters is not None
            else InMemoryDeadLetterQueue(self.options.dead_letter_limit)
        )
        self._keeper = LeaseKeeper(self.store, self.options.idempotency.lease)
        self._builder = PlanBuilder(
            registry=self.registry,
            options=self.options,
            store=self.store,
            serializer=self.serializer,
            dead_letters=self.dead_letters,
            resolver=resolver or NoResolver(),
            keeper=self._keeper,
        )
        self._plans: dict[type[Any], Plan] = {}
        self._version = self.registry.version
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        for behavior in behaviors:
            self.add_behavior(behavior)

    # Configuration ---------------------------------------------------------

    def add_behavior(
        self,
        behavior: Behavior,
        *,
        order: int = Order.USER,
        message_types: Iterable[type[Message]] | None = None,
    ) -> None:
        """Add a pipeline behaviour for all message types, or only ``message_types``.

        Lower ``order`` wraps higher: built-ins sit at ``Order.LOGGING`` (100) …
        ``Order.RETRY`` (500); user behaviours default to ``Order.USER`` (600), inside
        retry (so they run per attempt), and ``Order.TIMEOUT`` (900) is innermost.
        Behaviours of equal order run in the order they were added.
        """
        types = None if message_types is None else tuple(message_types)
        self._builder.user.append(BehaviorSpec(behavior, int(order), types))
        self._plans.clear()

    # Hot path -----------------------------------------------------------------

    def _plan(self, message_type: type[Any]) -> Plan:
        if self._version != self.registry.version:
            self._plans.clear()
            self._version = self.registry.version
        plan = self._plans.get(message_type)
        if plan is None:
            plan = self._plans[message_type] = self._builder.plan(message_type)
        return plan

    async def send(self, command: Command[R], *, qos: QoS | int | None = None) -> R:
        """Send a command to its one handler and return the handler's result.

        Args:
            command: the command.
            qos: override the type's QoS for this call.

        Returns:
            What the handler returned (for QoS 2 duplicates, the stored result).

        Raises:
            HandlerNotFoundError: no handler is registered (and the type is not routed).
            RemoteHandlerError: the remote handler raised.
            RequestTimeoutError: a routed command got no reply in time.
            Exception: the handler's own error, after retries at QoS >= 1.
        """
        plan = self._plan(type(command))
        level = plan.qos if qos is None else QoS(qos)
        if plan.route is not None:
            return await self._request(plan, command, level)  # type: ignore[no-any-return]
        chains = self._builder.chains(plan, level, False)
        if len(chains) != 1 or not plan.is_command:
            raise self._bad_send(command)
        chain, handler = chains[0]
        return await chain(command, Context(plan.message_type, handler, level))  # type: ignore[no-any-return]

    async def publish(self, event: Event, *, qos: QoS | int | None = None) -> None:
        """Publish an event to every handler (none is fine).

        At QoS 0 the handlers are scheduled and this returns at once; at QoS >= 1 it
        returns when every handler finished (each retried on its own).

        Raises:
            PublishError: one or more handlers failed for good (the others still ran).
        """
        plan = self._plan(type(event))
        if plan.is_command:
            raise MessageKindError(f"publish takes an Event; use send() for {plan.name}")
        level = plan.qos if qos is None else QoS(qos)
        if plan.route is not None:
            await self._transport().publish(
                plan.route, self._envelope(plan, event, level), qos=level
            )
            return
        chains = self._builder.chains(plan, level, False)
        if level == QoS.AT_MOST_ONCE:
            self._check_open()
            for chain, handler in chains:
                self._spawn(chain(event, Context(plan.message_type, handler, level)))
            return
        await _run_all(event, plan, chains, level, None)

    async def send_many(
        self, commands: Iterable[Command[R]], *, qos: QoS | int | None = None
    ) -> list[R]:
        """Send commands concurrently; return their results in order.

        Every command runs to the end; then the first error, if any, is raised.
        """
        results = await asyncio.gather(
            *(self.send(c, qos=qos) for c in commands), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    async def publish_many(self, events: Iterable[Event], *, qos: QoS | int | None = None) -> None:
        """Publish events; routed ones go to the transport in one batch per route.

        Raises:
            PublishError: handlers failed (the first such error is raised after all ran).
        """
        batches: dict[str, list[Envelope]] = {}
        local: list[Event] = []
        for event in events:
            plan = self._plan(type(event))
            if plan.is_command:
                raise MessageKindError(f"publish_many takes Events; use send() for {plan.name}")
            if plan.route is None:
                local.append(event)
                continue
            level = plan.qos if qos is None else QoS(qos)
            batches.setdefault(plan.route, []).append(self._envelope(plan, event, level))
        for route, envelopes in batches.items():
            level = QoS(max(e.qos for e in envelopes))
            await self._transport().publish_many(route, envelopes, qos=level)
        results = await asyncio.gather(
            *(self.publish(e, qos=qos) for e in local), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # From a broker ------------------------------------------------------------

    async def dispatch_delivered(self, message: Message, delivery: Delivery) -> Any:
        """Run a message that arrived from a transport through its local handlers.

        Retrying and dead-lettering are left to the caller (the worker nacks or
        dead-letters the delivery); QoS 2 still goes through the idempotency store.

        Returns:
            A command's result; ``None`` for an event.
        """
        plan = self._plan(type(message))
        level = QoS(delivery.envelope.qos)
        chains = self._builder.chains(plan, level, True)
        if isinstance(message, Command):
            if len(chains) != 1:
                raise self._bad_send(message)
            chain, handler = chains[0]
            return await chain(message, Context(plan.message_type, handler, level, delivery))
        await _run_all(message, plan, chains, level, delivery)
        return None

    def local_routes(self) -> dict[str, set[QoS]]:
        """Return each route this process has handlers for, with the QoS levels it carries."""
        routes: dict[str, set[QoS]] = {}
        for message_type in self.registry.message_types:
            plan = self._plan(message_type)
            if plan.route is not None and plan.handlers:
                routes.setdefault(plan.route, set()).add(plan.qos)
        return routes

    def check(self) -> None:
        """Compose every chain now, so wiring errors surface at start-up.

        Raises:
            DependencyError: a handler parameter nothing provides.
        """
        for message_type in self.registry.message_types:
            plan = self._plan(message_type)
            self._builder.chains(plan, plan.qos, plan.route is not None)

    # Dead letters -------------------------------------------------------------

    async def replay_dead_letter(self, entry_id: int) -> Any:
        """Run a dead-lettered message again through the handler that failed it.

        Raises:
            DeadLetterError: no entry with that id.
        """
        return await self.dead_letters.replay(entry_id, self._replay)

    async def _replay(self, entry: DeadLetterEntry) -> Any:
        plan = self._plan(type(entry.message))
        level = QoS(entry.qos)
        for chain, handler in self._builder.chains(plan, level, False):
            if handler.name == entry.handler:
                return await chain(entry.message, Context(plan.message_type, handler, level))
        raise HandlerNotFoundError(plan.message_type)

    # Remote -------------------------------------------------------------------

    def _transport(self) -> Transport:
        assert self.transport is not None  # checked in __init__ when routes exist
        return self.transport

    def _envelope(self, plan: Plan, message: Message, qos: QoS) -> Envelope:
        return Envelope(
            message_id=message.message_id,
            message_type=plan.name,
            body=self.serializer.encode(message),
            qos=int(qos),
            correlation_id=message.correlation_id,
            created_at=message.created_at,
        )

    async def _request(self, plan: Plan, command: Command[Any], qos: QoS) -> Any:
        if not isinstance(command, Command):
            raise MessageKindError(f"send takes a Command; use publish() for {plan.name}")
        envelope = self._envelope(plan, command, qos)
        reply = await self._transport().request(
            plan.route or "", envelope, timeout=self.options.request_timeout
        )
        if reply.error_type is not None:
            raise RemoteHandlerError(
                command.message_id, reply.error_type, reply.error_message or ""
            )
        return self.serializer.decode(reply.body, plan.result_type)

    # Lifecycle ------------------------------------------------------------------

    def _bad_send(self, message: Message) -> CatgaError:
        if not isinstance(message, Command):
            return MessageKindError(
                f"send takes a Command; {type(message).__qualname__} is not one (use publish)"
            )
        return HandlerNotFoundError(type(message))

    def _check_open(self) -> None:
        if self._closed:
            raise CatgaError("the mediator is closed: create a new one to dispatch messages")

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        # Already logged by the logging behaviour; retrieving it keeps asyncio quiet.
        if not task.cancelled():
            task.exception()

    @property
    def in_flight(self) -> int:
        """How many QoS 0 handler runs are still going."""
        return len(self._background)

    async def aclose(self) -> None:
        """Wait for in-flight QoS 0 work, stop lease renewal; idempotent."""
        self._closed = True
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._keeper.aclose()

    async def __aenter__(self) -> Mediator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _run_all(
    event: Message, plan: Plan, chains: Chains, level: QoS, delivery: Delivery | None
) -> None:
    """Run every handler chain of an event concurrently; raise once all have finished."""
    if len(chains) == 1:  # the common case, without the bookkeeping below
        chain, handler = chains[0]
        try:
            await chain(event, Context(plan.message_type, handler, level, delivery))
        except Exception as exc:
            _raise_busy(exc, delivery)
            raise PublishError(event.message_id, ((handler.name, exc),)) from exc
        return
    runs = [chain(event, Context(plan.message_type, h, level, delivery)) for chain, h in chains]
    outcomes = await _settle_all(runs)
    errors = tuple((h.name, e) for (_, h), e in zip(chains, outcomes, strict=True) if e is not None)
    for _, error in errors:
        _raise_busy(error, delivery)
    if errors:
        raise PublishError(event.message_id, errors) from errors[0][1]


async def _settle_all(runs: list[Awaitable[Any]]) -> list[Exception | None]:
    """Await all runs concurrently; return each one's exception (or ``None``).

    The last run is awaited in the calling task and only the others get tasks of
    their own: a quarter of ``gather``'s cost for three handlers (bench/inprocess.py).
    If the caller is cancelled, the runs still going are cancelled too.
    """
    if not runs:
        return []
    *others, last = runs
    tasks = [asyncio.ensure_future(run) for run in others]
    outcomes: list[Exception | None] = []
    try:
        last_error = await _outcome(last)
        outcomes = [await _outcome(task) for task in tasks]
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    outcomes.append(last_error)
    return outcomes


async def _outcome(run: Awaitable[Any]) -> Exception | None:
    try:
        await run
    except Exception as exc:  # noqa: BLE001 - every handler's failure is reported
        return exc
    return None


def _raise_busy(error: BaseException, delivery: Delivery | None) -> None:
    """From a broker, a handler busy elsewhere defers the delivery: it has not failed."""
    if delivery is not None and isinstance(error, InProgressError):
        raise error
