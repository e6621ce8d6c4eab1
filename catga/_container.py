"""Dependency-injector wiring: the container and the resolver for handler parameters."""

from __future__ import annotations

import inspect
from typing import Any

from dependency_injector import containers, providers

from ._dead_letters import InMemoryDeadLetterQueue
from ._mediator import Mediator
from ._memory_store import InMemoryIdempotencyStore
from ._options import CatgaOptions
from ._pipeline import Getter, is_injection_marker
from ._registry import HandlerInfo, HandlerRegistry
from ._serializer import JsonSerializer
from .exceptions import DependencyError

__all__ = ["CatgaContainer", "ContainerResolver"]


class ContainerResolver:
    """Resolves handler parameters from a dependency-injector container.

    A parameter is matched, in order, by a ``Provide[Container.name]`` default
    (``from dependency_injector.wiring import Provide``), by
    its name (a provider of that name), or by its annotation (the one provider whose
    ``provides`` is that class or a subclass). Matching happens once per handler;
    each message then calls the provider, so a ``Factory`` gives a new value per
    message. A provider returning an async generator is a per-message resource:
    catga takes its first value and finishes it after the handler.
    """

    def __init__(self, *containers: Any) -> None:
        self.containers = containers

    def resolve(self, parameter: inspect.Parameter, handler: HandlerInfo) -> Getter | None:
        """Return the provider for ``parameter``, or ``None`` if no container has one."""
        found: Any = self._by_marker(parameter.default)
        if found is None and not is_injection_marker(parameter.default):
            found = self._named(parameter.name)
        if found is None:
            found = self._by_type(parameter.annotation, handler, parameter.name)
        return found  # type: ignore[no-any-return]

    def _by_marker(self, default: Any) -> Any:
        if not is_injection_marker(default):
            return None
        wanted = default.provider
        if isinstance(wanted, str):
            return self._named(wanted.rpartition(".")[2])
        # Provide[AppContainer.x] names the class-level provider; the instance has its own
        # copy (with its overrides), found by the name the class gives it.
        for container in self.containers:
            parent = getattr(container, "declarative_parent", None)
            for name, provider in getattr(parent, "providers", {}).items():
                if provider is wanted and name in container.providers:
                    return container.providers[name]
        return wanted

    def _named(self, name: str) -> Any:
        return next((c.providers[name] for c in self.containers if name in c.providers), None)

    def _by_type(self, annotation: Any, handler: HandlerInfo, name: str) -> Any:
        if not isinstance(annotation, type):
            return None
        matches = [
            p
            for container in self.containers
            for p in container.providers.values()
            if isinstance(getattr(p, "provides", None), type) and issubclass(p.provides, annotation)
        ]
        if len(matches) > 1:
            raise DependencyError(
                f"handler {handler.name} parameter {name!r}: {len(matches)} providers give "
                f"{annotation.__qualname__}; name the parameter after one of them "
                "or use Provide[...]"
            )
        return matches[0] if matches else None


def build_mediator(
    *,
    registry: HandlerRegistry,
    options: CatgaOptions,
    store: Any,
    transport: Any,
    serializer: Any,
    dead_letters: InMemoryDeadLetterQueue,
    services: Any,
    catga: Any,
) -> Mediator:
    """Build the mediator; handler parameters come from ``services``, else from ``catga``."""
    return Mediator(
        registry,
        options=options,
        store=store,
        transport=transport,
        serializer=serializer,
        dead_letters=dead_letters,
        resolver=ContainerResolver(*(c for c in (services, catga) if c is not None)),
    )


class CatgaContainer(containers.DeclarativeContainer):
    """The providers catga needs; compose it into your container and override what you need.

    dependency-injector relinks overridden providers when a container is composed with
    ``providers.Container`` (not when it is subclassed), so compose it::

        class AppContainer(containers.DeclarativeContainer):
            __self__ = providers.Self()
            payments = providers.Singleton(PaymentGateway)
            catga = providers.Container(
                CatgaContainer,
                registry=providers.Singleton(HandlerRegistry.from_modules, "app.handlers"),
                services=__self__,
            )

        mediator = AppContainer().catga.mediator()

    Handler parameters after the message are resolved from ``services`` (your
    container) first, then from this one (see :class:`ContainerResolver`).
    """

    __self__ = providers.Self()
    services: providers.Provider[Any] = providers.Object(None)
    options = providers.Singleton(CatgaOptions)
    registry = providers.Singleton(HandlerRegistry)
    serializer = providers.Singleton(JsonSerializer)
    idempotency_store = providers.Singleton(InMemoryIdempotencyStore)
    transport: providers.Provider[Any] = providers.Object(None)
    dead_letters = providers.Singleton(
        InMemoryDeadLetterQueue, limit=options.provided.dead_letter_limit
    )
    mediator = providers.Singleton(
        build_mediator,
        registry=registry,
        options=options,
        store=idempotency_store,
        transport=transport,
        serializer=serializer,
        dead_letters=dead_letters,
        services=services,
        catga=__self__,
    )
