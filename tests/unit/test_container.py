"""Dependency injection: ContainerResolver matching and the composed CatgaContainer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from attrs import frozen
from dependency_injector import containers, providers
from dependency_injector.wiring import Provide

from catga import (
    CatgaContainer,
    CatgaOptions,
    Command,
    ContainerResolver,
    HandlerRegistry,
    IdempotencyOptions,
    InMemoryDeadLetterQueue,
    InMemoryIdempotencyStore,
    JsonSerializer,
    Mediator,
    QoS,
    handles,
)
from catga.exceptions import DependencyError
from tests.unit.fixtures_pkg.sub.billing import ChargeCard

QOS0 = CatgaOptions(default_qos=QoS.AT_MOST_ONCE)


class Gateway:
    """A service a handler depends on."""


class FastGateway(Gateway):
    pass


class SlowGateway(Gateway):
    pass


class Clock:
    pass


async def unit_of_work(journal: list[str]) -> AsyncIterator[str]:
    journal.append("open")
    try:
        yield "uow"
    finally:
        journal.append("close")


async def fetch_rate() -> float:
    return 1.25


@frozen(kw_only=True)
class ByName(Command[Any]):
    pass


@frozen(kw_only=True)
class ByType(Command[Any]):
    pass


@frozen(kw_only=True)
class ByMarker(Command[Any]):
    pass


@frozen(kw_only=True)
class ByClassMarker(Command[Any]):
    pass


@frozen(kw_only=True)
class WithDefault(Command[Any]):
    pass


@frozen(kw_only=True)
class Missing(Command[Any]):
    pass


@frozen(kw_only=True)
class Ambiguous(Command[Any]):
    pass


@frozen(kw_only=True)
class InClass(Command[Any]):
    pass


@frozen(kw_only=True)
class WithResource(Command[Any]):
    fail: bool = False


@frozen(kw_only=True)
class WithCoroutine(Command[Any]):
    pass


@frozen(kw_only=True)
class NeedsMediator(Command[Any]):
    pass


@frozen(kw_only=True)
class FromCatga(Command[Any]):
    pass


@frozen(kw_only=True)
class BadMarker(Command[Any]):
    pass


@handles(ByName)
async def by_name(command: ByName, gateway: Any, clock: Any) -> tuple[Any, Any]:
    return gateway, clock


@handles(ByType)
async def by_type(command: ByType, service: Gateway) -> Gateway:
    return service


@handles(ByMarker)
async def by_marker(command: ByMarker, service: Any = Provide["gateway"]) -> Any:
    return service


@handles(WithDefault)
async def with_default(command: WithDefault, retries: int = 3) -> int:
    return retries


@handles(Missing)
async def missing(command: Missing, nowhere: int) -> int:
    return nowhere


@handles(Ambiguous)
async def ambiguous(command: Ambiguous, service: Gateway) -> Gateway:
    return service


@handles(InClass)
class InClassHandler:
    def __init__(self, gateway: Gateway, label: str = "default") -> None:
        self.gateway = gateway
        self.label = label

    async def handle(self, command: InClass, clock: Clock) -> tuple[Any, ...]:
        return self.gateway, self.label, clock


@handles(WithResource)
async def with_resource(command: WithResource, uow: str, journal: list[str]) -> str:
    journal.append(f"handle with {uow}")
    if command.fail:
        raise RuntimeError("handler failed")
    return uow


@handles(WithCoroutine)
async def with_coroutine(command: WithCoroutine, rate: float) -> float:
    return rate


@handles(NeedsMediator)
async def needs_mediator(command: NeedsMediator, mediator: Mediator) -> Mediator:
    return mediator


@handles(FromCatga)
async def from_catga(
    command: FromCatga, options: CatgaOptions, store: InMemoryIdempotencyStore
) -> tuple[Any, Any]:
    return options, store


@handles(BadMarker)
async def bad_marker(command: BadMarker, service: Any = Provide["no_such_provider"]) -> Any:
    return service


class Services(containers.DeclarativeContainer):
    gateway = providers.Singleton(Gateway)
    clock = providers.Factory(Clock)
    journal = providers.Singleton(list)
    uow = providers.Factory(unit_of_work, journal=journal)
    rate = providers.Coroutine(fetch_rate)


class TwoGateways(containers.DeclarativeContainer):
    fast = providers.Singleton(FastGateway)
    slow = providers.Singleton(SlowGateway)


@handles(ByClassMarker)
async def by_class_marker(command: ByClassMarker, service: Any = Provide[Services.gateway]) -> Any:
    return service


class App(containers.DeclarativeContainer):
    """Composed as docs/di.md shows."""

    __self__ = providers.Self()
    gateway = providers.Singleton(Gateway)
    clock = providers.Factory(Clock)
    catga = providers.Container(
        CatgaContainer,
        options=providers.Singleton(
            CatgaOptions,
            default_qos=QoS.AT_MOST_ONCE,
            idempotency=IdempotencyOptions(lease=5.0),
            dead_letter_limit=7,
        ),
        registry=providers.Singleton(HandlerRegistry.from_modules, "tests.unit.fixtures_pkg"),
        services=__self__,
    )


def mediator_for(*handlers: Any, container: Any = None) -> Mediator:
    services = container if container is not None else Services()
    return Mediator(HandlerRegistry(*handlers), options=QOS0, resolver=ContainerResolver(services))


class TestContainerResolver:
    async def test_by_parameter_name(self) -> None:
        """A parameter named like a provider gets that provider's value."""
        services = Services()
        async with mediator_for(by_name, container=services) as mediator:
            gateway, clock = await mediator.send(ByName())
        assert gateway is services.gateway()
        assert isinstance(clock, Clock)

    async def test_factory_gives_a_new_value_per_message(self) -> None:
        """A Factory is called for every message; a Singleton gives the same object."""
        async with mediator_for(by_name) as mediator:
            gateway_1, clock_1 = await mediator.send(ByName())
            gateway_2, clock_2 = await mediator.send(ByName())
        assert gateway_1 is gateway_2
        assert clock_1 is not clock_2

    async def test_by_annotation(self) -> None:
        """A parameter whose name matches nothing is matched by its annotated class."""
        services = Services()
        async with mediator_for(by_type, container=services) as mediator:
            assert await mediator.send(ByType()) is services.gateway()

    async def test_by_annotation_matches_subclasses(self) -> None:
        """A provider of a subclass satisfies a parameter annotated with the base class."""
        only_fast = containers.DynamicContainer()
        only_fast.fast = providers.Singleton(FastGateway)
        async with mediator_for(by_type, container=only_fast) as mediator:
            assert isinstance(await mediator.send(ByType()), FastGateway)

    async def test_ambiguous_annotation_is_a_dependency_error(self) -> None:
        """Two providers of the annotated class raise DependencyError advising a name."""
        async with mediator_for(ambiguous, container=TwoGateways()) as mediator:
            with pytest.raises(DependencyError, match="2 providers") as caught:
                mediator.check()
        assert "Provide" in str(caught.value)

    async def test_name_wins_over_annotation(self) -> None:
        """A parameter named after one provider is not ambiguous."""

        @handles(Ambiguous)
        async def named(command: Ambiguous, slow: Gateway) -> Gateway:
            return slow

        async with mediator_for(named, container=TwoGateways()) as mediator:
            assert isinstance(await mediator.send(Ambiguous()), SlowGateway)

    async def test_by_provide_marker_with_a_name(self) -> None:
        """A Provide["name"] default is resolved by that provider name."""
        services = Services()
        async with mediator_for(by_marker, container=services) as mediator:
            assert await mediator.send(ByMarker()) is services.gateway()

    async def test_by_provide_marker_with_a_provider(self) -> None:
        """A Provide[Container.provider] default is resolved to a Gateway."""
        async with mediator_for(by_class_marker) as mediator:
            assert isinstance(await mediator.send(ByClassMarker()), Gateway)

    async def test_provide_marker_uses_the_container_instance(self) -> None:
        """Provide[Services.gateway] gives the resolver's container's value, overrides included."""
        services = Services()
        fake = Gateway()
        services.gateway.override(providers.Object(fake))
        async with mediator_for(by_class_marker, container=services) as mediator:
            assert await mediator.send(ByClassMarker()) is fake

    async def test_unresolvable_provide_marker_is_a_dependency_error(self) -> None:
        """A Provide["missing"] default that no container has is a DependencyError."""
        async with mediator_for(bad_marker) as mediator:
            with pytest.raises(DependencyError, match="service"):
                mediator.check()

    async def test_default_is_kept_without_a_provider(self) -> None:
        """A parameter with a default that nothing provides keeps its default."""
        async with mediator_for(with_default) as mediator:
            assert await mediator.send(WithDefault()) == 3

    async def test_generic_annotation_is_not_matched_by_type(self) -> None:
        """An annotation that is not a class (list[str]) is never matched by type."""

        @handles(WithDefault)
        async def generic(command: WithDefault, tags: list[str] | None = None) -> Any:
            return tags

        async with mediator_for(generic) as mediator:
            assert await mediator.send(WithDefault()) is None

    async def test_missing_provider_at_first_send_and_check(self) -> None:
        """A parameter nothing provides fails the first send and check() with DependencyError."""
        async with mediator_for(missing) as mediator:
            with pytest.raises(DependencyError, match="nowhere"):
                await mediator.send(Missing())
            with pytest.raises(DependencyError, match="nowhere"):
                mediator.check()

    async def test_class_handler_init_dependencies(self) -> None:
        """A class handler's constructor and handle parameters are both injected."""
        services = Services()
        async with mediator_for(InClassHandler, container=services) as mediator:
            gateway, label, clock = await mediator.send(InClass())
        assert gateway is services.gateway()
        assert label == "default"
        assert isinstance(clock, Clock)

    async def test_async_generator_provider_is_a_per_message_resource(self) -> None:
        """A Factory of an async generator is opened before and closed after the handler."""
        services = Services()
        async with mediator_for(with_resource, container=services) as mediator:
            assert await mediator.send(WithResource()) == "uow"
            with pytest.raises(RuntimeError):
                await mediator.send(WithResource(fail=True))
        assert services.journal() == [
            "open",
            "handle with uow",
            "close",
            "open",
            "handle with uow",
            "close",
        ]

    async def test_coroutine_provider_is_awaited(self) -> None:
        """A provider returning a coroutine is awaited."""
        async with mediator_for(with_coroutine) as mediator:
            assert await mediator.send(WithCoroutine()) == 1.25

    async def test_containers_are_searched_in_order(self) -> None:
        """The first container that has a name wins."""
        first, second = containers.DynamicContainer(), containers.DynamicContainer()
        first.gateway = providers.Object("first")
        second.gateway = providers.Object("second")
        second.clock = providers.Object("clock")
        resolver = ContainerResolver(first, second)
        registry = HandlerRegistry(by_name)
        async with Mediator(registry, options=QOS0, resolver=resolver) as mediator:
            assert await mediator.send(ByName()) == ("first", "clock")


class TestCatgaContainer:
    async def test_composed_container_builds_a_working_mediator(self) -> None:
        """The container from docs/di.md builds a mediator over the scanned registry."""
        app = App()
        mediator = app.catga.mediator()
        async with mediator:
            assert await mediator.send(ChargeCard(amount=5)) == "charged 5"
        assert mediator is app.catga.mediator()

    async def test_mediator_uses_the_containers_parts(self) -> None:
        """The mediator's options, registry, store, serializer and dead letters come from it."""
        app = App()
        mediator = app.catga.mediator()
        assert mediator.options is app.catga.options()
        assert mediator.options.idempotency.lease == 5.0
        assert mediator.registry is app.catga.registry()
        assert mediator.store is app.catga.idempotency_store()
        assert isinstance(mediator.store, InMemoryIdempotencyStore)
        assert mediator.serializer is app.catga.serializer()
        assert isinstance(mediator.serializer, JsonSerializer)
        assert mediator.dead_letters is app.catga.dead_letters()
        assert mediator.transport is None
        await mediator.aclose()

    async def test_overridden_store_is_used(self) -> None:
        """Overriding idempotency_store in the composition gives the mediator that store."""
        store = InMemoryIdempotencyStore(max_entries=5)

        class WithStore(containers.DeclarativeContainer):
            __self__ = providers.Self()
            catga = providers.Container(
                CatgaContainer, idempotency_store=providers.Object(store), services=__self__
            )

        async with WithStore().catga.mediator() as mediator:
            assert mediator.store is store

    async def test_handler_parameters_come_from_services_then_catga(self) -> None:
        """Handlers get app services by name, and catga's own parts by type."""
        app = App()
        mediator = app.catga.mediator()
        mediator.registry.register(by_name, from_catga, needs_mediator)
        async with mediator:
            gateway, _ = await mediator.send(ByName())
            options, store = await mediator.send(FromCatga())
            assert await mediator.send(NeedsMediator()) is mediator
        assert gateway is app.gateway()
        assert options is app.catga.options()
        assert store is app.catga.idempotency_store()

    async def test_dead_letter_limit_comes_from_the_options(self) -> None:
        """The container's dead-letter queue honours CatgaOptions.dead_letter_limit."""
        app = App()
        queue = app.catga.dead_letters()
        assert isinstance(queue, InMemoryDeadLetterQueue)
        assert queue.limit == app.catga.options().dead_letter_limit == 7
