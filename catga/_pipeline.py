"""The per-dispatch context, chain composition and handler invocation with injection."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol

from ._qos import QoS
from ._registry import HandlerInfo
from .exceptions import DependencyError
from .typing import Behavior, Delivery, Next

__all__ = ["Context", "NoResolver", "Resolver", "compose", "is_injection_marker", "make_terminal"]

Getter = Callable[[], Any]


class Context:
    """What a behaviour knows about the dispatch it wraps.

    Attributes:
        message_type: the message's class.
        handler: the handler this chain ends in.
        qos: the effective quality of service.
        attempt: 1 on the first attempt, raised by the retry behaviour.
        delivery: the transport delivery when the message came from a broker, else ``None``.
        items: free space for behaviours to share values within one dispatch.
    """

    __slots__ = ("_items", "attempt", "delivery", "handler", "message_type", "qos")

    def __init__(
        self,
        message_type: type[Any],
        handler: HandlerInfo,
        qos: QoS,
        delivery: Delivery | None = None,
    ) -> None:
        self.message_type = message_type
        self.handler = handler
        self.qos = qos
        self.attempt = 1
        self.delivery = delivery
        self._items: dict[str, Any] | None = None

    @property
    def items(self) -> dict[str, Any]:
        """A dict behaviours may use to share values within this dispatch (made on first use)."""
        if self._items is None:
            self._items = {}
        return self._items

    def __repr__(self) -> str:
        return (
            f"Context({self.message_type.__qualname__}, handler={self.handler.name}, "
            f"qos={self.qos.name}, attempt={self.attempt})"
        )


def compose(behaviors: Sequence[Behavior], terminal: Next) -> Next:
    """Wrap ``terminal`` in ``behaviors`` (the first one outermost), once, for reuse."""
    call = terminal
    for behavior in reversed(behaviors):
        call = _link(behavior, call)
    return call


def _link(behavior: Behavior, inner: Next) -> Next:
    # A plain closure returns the behaviour's coroutine itself: no extra frame per step.
    def step(message: Any, ctx: Any) -> Awaitable[Any]:
        return behavior(message, ctx, inner)

    return step


class Resolver(Protocol):
    """Finds the value for a handler parameter; asked once per handler, not per message."""

    def resolve(self, parameter: inspect.Parameter, handler: HandlerInfo) -> Getter | None:
        """Return a zero-argument callable producing the value, or ``None`` if unknown."""
        ...


class NoResolver:
    """Resolves nothing: handlers may only have parameters with defaults."""

    def resolve(self, parameter: inspect.Parameter, handler: HandlerInfo) -> Getter | None:
        """Return ``None``: no container."""
        return None


def make_terminal(info: HandlerInfo, resolver: Resolver) -> Next:
    """Build the innermost step that calls the handler with its injected parameters.

    Raises:
        DependencyError: a parameter without a default that the resolver does not know.
    """
    call_getters = _getters(info.parameters, info, resolver)
    if info.call is not None:
        func = info.call
        if not call_getters:
            return lambda message, ctx: func(message)
        return _with_scope(lambda kwargs: func, call_getters, ())
    cls = info.target
    init_getters = _getters(info.init_parameters, info, resolver)
    return _with_scope(lambda kwargs: cls(**kwargs).handle, call_getters, init_getters)


def _getters(
    params: tuple[inspect.Parameter, ...], info: HandlerInfo, resolver: Resolver
) -> tuple[tuple[str, Getter], ...]:
    getters = []
    for param in params:
        getter = resolver.resolve(param, info)
        if getter is None:
            if param.default is not param.empty and not is_injection_marker(param.default):
                continue
            raise DependencyError(
                f"handler {info.name} parameter {param.name!r} has no provider: add a provider "
                f"named {param.name!r} to the container, or give the parameter a default"
            )
        getters.append((param.name, getter))
    return tuple(getters)


def _with_scope(
    target: Callable[[dict[str, Any]], Callable[..., Awaitable[Any]]],
    call_getters: tuple[tuple[str, Getter], ...],
    init_getters: tuple[tuple[str, Getter], ...],
) -> Next:
    async def invoke(message: Any, ctx: Any) -> Any:
        async with AsyncExitStack() as scope:
            init_kwargs = {name: await _value(get(), scope) for name, get in init_getters}
            kwargs = {name: await _value(get(), scope) for name, get in call_getters}
            return await target(init_kwargs)(message, **kwargs)

    return invoke


async def _value(value: Any, scope: AsyncExitStack) -> Any:
    """Turn a provided value into the argument: await it, or open it as a per-message resource."""
    if inspect.isawaitable(value):
        value = await value
    if inspect.isasyncgen(value):
        value = await scope.enter_async_context(_Resource(value))
    return value


class _Resource:
    """An async generator as a context manager: the handler's error is raised at the yield.

    So a unit of work rolls back (its ``except``/``finally`` runs) instead of committing.
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    async def __aenter__(self) -> Any:
        return await anext(self.generator)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is None:
                await anext(self.generator)
            else:
                await self.generator.athrow(exc)
        except StopAsyncIteration:
            return False
        except BaseException as raised:
            if raised is exc:
                return False
            raise
        await self.generator.aclose()
        raise DependencyError(f"resource generator {self.generator!r} yielded more than once")


def is_injection_marker(value: Any) -> bool:
    """Whether a parameter default is a dependency-injector marker such as ``Provide[...]``."""
    # dependency-injector types its markers as a Protocol, so check the flag it sets.
    return bool(getattr(type(value), "__IS_MARKER__", False))
