"""Builds and caches, per message type, the route and the composed chains."""

from __future__ import annotations

import enum
import sys
import typing
from collections.abc import Mapping
from typing import Any

from attrs import define, frozen

from ._behaviors import (
    DeadLetterBehavior,
    LoggingBehavior,
    RetryBehavior,
    TimeoutBehavior,
    ValidationBehavior,
)
from ._dead_letters import InMemoryDeadLetterQueue
from ._idempotency import IdempotencyBehavior, LeaseKeeper
from ._messages import Command, Message, message_name
from ._options import CatgaOptions
from ._pipeline import Resolver, compose, make_terminal
from ._qos import QoS
from ._registry import HandlerInfo, HandlerRegistry
from .typing import Behavior, IdempotencyStore, Next, Serializer

__all__ = ["BehaviorSpec", "Order", "Plan", "PlanBuilder", "route_for"]


class Order(enum.IntEnum):
    """Where a behaviour sits in the chain: lower wraps higher (runs first and last)."""

    LOGGING = 100
    VALIDATION = 200
    DEAD_LETTER = 300
    IDEMPOTENCY = 400
    RETRY = 500
    USER = 600
    TIMEOUT = 900


@frozen
class BehaviorSpec:
    """A user behaviour, its place, and the message types it applies to (``None``: all)."""

    behavior: Behavior
    order: int
    message_types: tuple[type[Message], ...] | None

    def applies_to(self, message_type: type[Any]) -> bool:
        """Return whether the behaviour wraps handlers of ``message_type``."""
        return self.message_types is None or issubclass(message_type, self.message_types)


Chains = tuple[tuple[Next, HandlerInfo], ...]


@define
class Plan:
    """Everything the hot path needs for one message type, computed once."""

    message_type: type[Message]
    name: str
    qos: QoS
    route: str | None
    is_command: bool
    result_type: Any
    handlers: tuple[HandlerInfo, ...]
    # Indexed by QoS, then local (0) or from-a-broker (1); filled on first use.
    chains: list[list[Chains | None]]


def route_for(message_type: type[Any], routes: Mapping[type[Any] | str, str]) -> str | None:
    """Return the route of a type: an exact type entry, else the longest module-prefix entry."""
    exact = routes.get(message_type)
    if exact is not None:
        return exact
    dotted = f"{message_type.__module__}.{message_type.__qualname__}"
    best: tuple[int, str] | None = None
    for key, route in routes.items():
        matches = isinstance(key, str) and (dotted == key or dotted.startswith(key + "."))
        if matches and (best is None or len(str(key)) > best[0]):
            best = (len(str(key)), route)
    return None if best is None else best[1]


def result_type_of(message_type: type[Any]) -> Any:
    """Return ``R`` of a ``Command[R]`` subclass (``Any`` when it cannot be told)."""
    for klass in message_type.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is Command:
                (arg,) = typing.get_args(base)
                return _resolve_name(arg, klass)
    return Any


def _resolve_name(arg: Any, owner: type[Any]) -> Any:
    """Resolve ``Command["Name"]`` by looking the name up in the owner's module (no eval)."""
    if isinstance(arg, typing.ForwardRef):
        arg = arg.__forward_arg__
    if isinstance(arg, typing.TypeVar):
        return Any
    if isinstance(arg, str):
        module = sys.modules.get(owner.__module__)
        found = getattr(module, arg, None) if arg.isidentifier() else None
        return found if isinstance(found, type) else Any
    return arg


class PlanBuilder:
    """Composes the chains of a mediator; one instance per mediator."""

    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        options: CatgaOptions,
        store: IdempotencyStore,
        serializer: Serializer,
        dead_letters: InMemoryDeadLetterQueue,
        resolver: Resolver,
        keeper: LeaseKeeper,
    ) -> None:
        self.registry = registry
        self.options = options
        self.store = store
        self.serializer = serializer
        self.dead_letters = dead_letters
        self.resolver = resolver
        self.keeper = keeper
        self.user: list[BehaviorSpec] = []
        self._logging = LoggingBehavior(log_handled=options.log_handled)
        self._validation = ValidationBehavior()
        self._dead_letter = DeadLetterBehavior(dead_letters)

    def plan(self, message_type: type[Message]) -> Plan:
        """Compute the plan of a message type (chains are composed lazily, per QoS)."""
        qos = message_type.qos if message_type.qos is not None else self.options.default_qos
        return Plan(
            message_type=message_type,
            name=message_name(message_type),
            qos=QoS(qos),
            route=route_for(message_type, self.options.routes),
            is_command=issubclass(message_type, Command),
            result_type=result_type_of(message_type),
            handlers=self.registry.handlers_for(message_type),
            chains=[[None, None] for _ in QoS],
        )

    def chains(self, plan: Plan, qos: QoS, remote: bool) -> Chains:
        """Return (and cache) the chains of every handler of ``plan`` at ``qos``."""
        cached = plan.chains[qos][remote]
        if cached is None:
            cached = tuple(
                (compose(self._behaviors(plan, h, qos, remote), make_terminal(h, self.resolver)), h)
                for h in plan.handlers
            )
            plan.chains[qos][remote] = cached
        return cached

    def _behaviors(
        self, plan: Plan, handler: HandlerInfo, qos: QoS, remote: bool
    ) -> list[Behavior]:
        cls = plan.message_type
        steps: list[tuple[int, Behavior]] = [(Order.LOGGING, self._logging)]
        if ValidationBehavior.applies_to(cls):
            steps.append((Order.VALIDATION, self._validation))
        # From a broker, retry and dead-lettering belong to the broker (nack, DLQ stream).
        if qos >= QoS.AT_LEAST_ONCE and not remote:
            steps.append((Order.DEAD_LETTER, self._dead_letter))
            steps.append((Order.RETRY, RetryBehavior(cls.retry or self.options.retry)))
        if qos == QoS.EXACTLY_ONCE:
            steps.append((Order.IDEMPOTENCY, self._idempotency(plan, handler)))
        steps.extend((s.order, s.behavior) for s in self.user if s.applies_to(cls))
        timeout = cls.timeout if cls.timeout is not None else self.options.timeout
        if timeout is not None:
            steps.append((Order.TIMEOUT, TimeoutBehavior(timeout)))
        steps.sort(key=lambda step: step[0])
        return [behavior for _, behavior in steps]

    def _idempotency(self, plan: Plan, handler: HandlerInfo) -> IdempotencyBehavior:
        is_command = issubclass(plan.message_type, Command)
        return IdempotencyBehavior(
            prefix=plan.name if is_command else f"{plan.name}:{handler.name}",
            result_type=plan.result_type if is_command else Any,
            store=self.store,
            serializer=self.serializer,
            options=self.options.idempotency,
            keeper=self.keeper,
        )
