"""The pipeline: context, chain composition and caching, handler invocation with injection."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, TypeVar

import pytest
from attrs import frozen

from catga import (
    CatgaOptions,
    Command,
    Context,
    Event,
    HandlerInfo,
    HandlerRegistry,
    Mediator,
    NoResolver,
    QoS,
    handles,
)
from catga._chains import result_type_of, route_for
from catga._pipeline import compose
from catga.exceptions import DependencyError
from catga.typing import Next

QOS0 = CatgaOptions(default_qos=QoS.AT_MOST_ONCE)
R = TypeVar("R")


class Repo:
    def __init__(self) -> None:
        self.saved: list[str] = []


@frozen(kw_only=True)
class Save(Command[str]):
    name: str


@frozen(kw_only=True)
class SaveFailing(Command[str]):
    name: str


@frozen(kw_only=True)
class Tally(Command[int]):
    pass


@frozen(kw_only=True)
class Greet(Command[str]):
    name: str


@frozen(kw_only=True)
class Noticed(Event):
    pass


@frozen(kw_only=True)
class Nested(Command[list[int]]):
    pass


@frozen(kw_only=True)
class NestedChild(Nested):
    pass


@frozen(kw_only=True)
class Open(Command[R]):
    pass


@handles(Save)
async def save(command: Save, repo: Repo, tx: str) -> str:
    repo.saved.append(f"{tx}:{command.name}")
    return tx


@handles(SaveFailing)
async def save_failing(command: SaveFailing, tx: str) -> str:
    raise RuntimeError(f"cannot save {command.name} in {tx}")


@handles(Tally)
async def tally(command: Tally, counter: int) -> int:
    return counter


@handles(Greet)
async def greet(command: Greet, greeting: str = "hello") -> str:
    return f"{greeting} {command.name}"


@handles(Greet)
class GreetHandler:
    instances: ClassVar[int] = 0

    def __init__(self, greeting: str, punctuation: str = "!") -> None:
        type(self).instances += 1
        self.greeting = greeting
        self.punctuation = punctuation

    async def handle(self, command: Greet, name_case: Callable[[str], str]) -> str:
        return f"{self.greeting} {name_case(command.name)}{self.punctuation}"


class DictResolver:
    """A resolver from a dict of name -> zero-argument callable, counting lookups."""

    def __init__(self, **getters: Callable[[], Any]) -> None:
        self.getters = getters
        self.lookups: list[str] = []

    def resolve(self, parameter: inspect.Parameter, handler: HandlerInfo) -> Any:
        self.lookups.append(parameter.name)
        return self.getters.get(parameter.name)


class Journal:
    """Records what resources and handlers did, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def resource(self, name: str) -> Callable[[], AsyncIterator[str]]:
        async def open_resource() -> AsyncIterator[str]:
            self.lines.append(f"open {name}")
            try:
                yield name
            finally:
                self.lines.append(f"close {name}")

        return open_resource

    def transaction(self) -> Callable[[], AsyncIterator[str]]:
        async def open_transaction() -> AsyncIterator[str]:
            self.lines.append("begin")
            try:
                yield "tx"
            except Exception:
                self.lines.append("rollback")
                raise
            else:
                self.lines.append("commit")

        return open_transaction


def _info() -> HandlerInfo:
    return HandlerRegistry(greet).handlers_for(Greet)[0]


class TestContext:
    def test_initial_state(self) -> None:
        """A new context starts at attempt 1 with no delivery."""
        ctx = Context(Greet, _info(), QoS.AT_LEAST_ONCE)
        assert ctx.attempt == 1
        assert ctx.delivery is None
        assert ctx.qos is QoS.AT_LEAST_ONCE
        assert ctx.message_type is Greet

    def test_items_are_made_on_first_use_and_kept(self) -> None:
        """ctx.items is one dict per context."""
        ctx = Context(Greet, _info(), QoS.AT_MOST_ONCE)
        ctx.items["user"] = "alice"
        assert ctx.items == {"user": "alice"}

    def test_repr_names_type_handler_qos_and_attempt(self) -> None:
        """The repr is useful in logs and debuggers."""
        text = repr(Context(Greet, _info(), QoS.EXACTLY_ONCE))
        assert "Greet" in text
        assert "greet" in text
        assert "EXACTLY_ONCE" in text
        assert "attempt=1" in text

    async def test_items_are_shared_within_one_dispatch_only(self) -> None:
        """Behaviours of one dispatch share ctx.items; the next dispatch starts empty."""
        seen: list[dict[str, Any]] = []

        async def outer(message: Any, ctx: Any, next: Next) -> Any:
            seen.append(dict(ctx.items))
            ctx.items["outer"] = message.name
            return await next(message, ctx)

        async def inner(message: Any, ctx: Any, next: Next) -> Any:
            seen.append(dict(ctx.items))
            return await next(message, ctx)

        async with Mediator(HandlerRegistry(greet), options=QOS0) as mediator:
            mediator.add_behavior(outer, order=550)
            mediator.add_behavior(inner, order=650)
            await mediator.send(Greet(name="a"))
            await mediator.send(Greet(name="b"))
        assert seen == [{}, {"outer": "a"}, {}, {"outer": "b"}]


class TestCompose:
    async def test_first_behaviour_is_outermost(self) -> None:
        """compose([a, b], t) runs a, then b, then t, and unwinds in reverse."""
        trail: list[str] = []

        def tracer(name: str) -> Any:
            async def behavior(message: Any, ctx: Any, next: Next) -> Any:
                trail.append(f"{name} in")
                result = await next(message, ctx)
                trail.append(f"{name} out")
                return result

            return behavior

        async def terminal(message: Any, ctx: Any) -> str:
            trail.append("handler")
            return "done"

        chain = compose([tracer("a"), tracer("b")], terminal)
        assert await chain("msg", None) == "done"
        assert trail == ["a in", "b in", "handler", "b out", "a out"]

    async def test_no_behaviours_is_the_terminal(self) -> None:
        """With nothing to wrap, the chain is the terminal itself."""

        async def terminal(message: Any, ctx: Any) -> Any:
            return message

        assert compose([], terminal) is terminal


class TestInjection:
    async def test_parameters_come_from_the_resolver(self) -> None:
        """Parameters after the message are filled by the resolver's getters."""
        repo = Repo()
        resolver = DictResolver(repo=lambda: repo, tx=lambda: "tx-1")
        async with Mediator(HandlerRegistry(save), resolver=resolver, options=QOS0) as mediator:
            assert await mediator.send(Save(name="a")) == "tx-1"
        assert repo.saved == ["tx-1:a"]

    async def test_resolved_once_per_handler_called_per_message(self) -> None:
        """Resolution happens when the chain is composed; the getter runs for every message."""
        counter = iter(range(100))
        resolver = DictResolver(counter=lambda: next(counter))
        async with Mediator(HandlerRegistry(tally), resolver=resolver, options=QOS0) as mediator:
            results = [await mediator.send(Tally()) for _ in range(3)]
        assert results == [0, 1, 2]
        assert resolver.lookups == ["counter"]

    async def test_default_is_used_when_nothing_provides(self) -> None:
        """A parameter with a default and no provider keeps its default."""
        async with Mediator(HandlerRegistry(greet), options=QOS0) as mediator:
            assert await mediator.send(Greet(name="bob")) == "hello bob"

    async def test_provider_wins_over_default(self) -> None:
        """When a provider exists, it is used instead of the default."""
        resolver = DictResolver(greeting=lambda: "hi")
        async with Mediator(HandlerRegistry(greet), resolver=resolver, options=QOS0) as mediator:
            assert await mediator.send(Greet(name="bob")) == "hi bob"

    async def test_missing_provider_fails_the_first_send(self) -> None:
        """A parameter with no default and no provider raises DependencyError naming both."""
        async with Mediator(HandlerRegistry(tally), resolver=NoResolver()) as mediator:
            with pytest.raises(DependencyError) as caught:
                await mediator.send(Tally())
        assert "counter" in str(caught.value)
        assert f"{__name__}.tally" in str(caught.value)
        assert len(mediator.dead_letters) == 0

    async def test_missing_provider_fails_check(self) -> None:
        """mediator.check() composes every chain so the wiring error shows at start-up."""
        async with Mediator(HandlerRegistry(greet, tally)) as mediator:
            with pytest.raises(DependencyError, match="counter"):
                mediator.check()

    async def test_check_passes_when_everything_resolves(self) -> None:
        """check() is silent when every parameter has a provider or a default."""
        async with Mediator(HandlerRegistry(greet, tally), resolver=DictResolver(counter=int)) as m:
            m.check()

    async def test_awaitable_values_are_awaited(self) -> None:
        """A getter returning an awaitable (a coroutine factory, an async resource) is awaited."""

        async def make_counter() -> int:
            return 41

        resolver = DictResolver(counter=make_counter)
        async with Mediator(HandlerRegistry(tally), resolver=resolver, options=QOS0) as mediator:
            assert await mediator.send(Tally()) == 41

    async def test_class_handler_gets_init_and_handle_dependencies(self) -> None:
        """A class handler is built per message with its __init__ parameters injected."""
        GreetHandler.instances = 0
        resolver = DictResolver(greeting=lambda: "hey", name_case=lambda: str.upper)
        registry = HandlerRegistry(GreetHandler)
        async with Mediator(registry, resolver=resolver, options=QOS0) as mediator:
            assert await mediator.send(Greet(name="ann")) == "hey ANN!"
            assert await mediator.send(Greet(name="bo")) == "hey BO!"
        assert GreetHandler.instances == 2

    async def test_class_handler_missing_init_dependency(self) -> None:
        """A constructor parameter nothing provides is a DependencyError too."""
        resolver = DictResolver(name_case=lambda: str.upper)
        async with Mediator(HandlerRegistry(GreetHandler), resolver=resolver) as mediator:
            with pytest.raises(DependencyError, match="greeting"):
                mediator.check()


class TestResources:
    async def test_async_generator_is_opened_before_and_closed_after(self) -> None:
        """A getter returning an async generator is a per-message resource."""
        journal = Journal()
        repo = Repo()
        resolver = DictResolver(repo=lambda: repo, tx=journal.resource("tx"))
        async with Mediator(HandlerRegistry(save), resolver=resolver, options=QOS0) as mediator:
            assert await mediator.send(Save(name="a")) == "tx"
            assert journal.lines == ["open tx", "close tx"]
            await mediator.send(Save(name="b"))
        assert journal.lines == ["open tx", "close tx", "open tx", "close tx"]
        assert repo.saved == ["tx:a", "tx:b"]

    async def test_resource_is_closed_when_the_handler_raises(self) -> None:
        """The resource is finished even when the handler fails, and the error propagates."""
        journal = Journal()
        resolver = DictResolver(tx=journal.resource("tx"))
        registry = HandlerRegistry(save_failing)
        async with Mediator(registry, resolver=resolver, options=QOS0) as mediator:
            with pytest.raises(RuntimeError, match="cannot save a in tx"):
                await mediator.send(SaveFailing(name="a"))
        assert journal.lines == ["open tx", "close tx"]

    async def test_resources_close_in_reverse_order(self) -> None:
        """Several resources are finished in reverse order of opening."""
        journal = Journal()
        resolver = DictResolver(repo=journal.resource("repo"), tx=journal.resource("tx"))
        async with Mediator(HandlerRegistry(save), resolver=resolver, options=QOS0) as mediator:
            with pytest.raises(AttributeError):
                await mediator.send(Save(name="a"))  # "repo" is a str here: no .saved
        assert journal.lines == ["open repo", "open tx", "close tx", "close repo"]

    async def test_opened_resource_is_closed_when_a_later_getter_fails(self) -> None:
        """If a later parameter cannot be made, the resources already opened are finished."""
        journal = Journal()

        def broken() -> Any:
            raise ConnectionError("database down")

        resolver = DictResolver(repo=journal.resource("repo"), tx=broken)
        async with Mediator(HandlerRegistry(save), resolver=resolver, options=QOS0) as mediator:
            with pytest.raises(ConnectionError):
                await mediator.send(Save(name="a"))
        assert journal.lines == ["open repo", "close repo"]

    async def test_generator_yielding_twice_is_an_error(self) -> None:
        """A resource generator must yield once; a second yield is a DependencyError."""
        closed: list[bool] = []

        async def twice() -> AsyncIterator[str]:
            try:
                yield "one"
                yield "two"
            finally:
                closed.append(True)

        async with Mediator(
            HandlerRegistry(greet),
            resolver=DictResolver(greeting=twice),
            options=QOS0,
        ) as mediator:
            with pytest.raises(DependencyError, match="more than once"):
                await mediator.send(Greet(name="x"))
        assert closed == [True]

    async def test_successful_handler_commits_the_transaction(self) -> None:
        """Code after the yield runs when the handler succeeded."""
        journal = Journal()
        resolver = DictResolver(repo=Repo, tx=journal.transaction())
        async with Mediator(HandlerRegistry(save), resolver=resolver, options=QOS0) as mediator:
            await mediator.send(Save(name="a"))
        assert journal.lines == ["begin", "commit"]

    async def test_failed_handler_rolls_the_transaction_back(self) -> None:
        """The handler's exception is raised at the resource's yield (rollback, not commit)."""
        journal = Journal()
        resolver = DictResolver(tx=journal.transaction())
        registry = HandlerRegistry(save_failing)
        async with Mediator(registry, resolver=resolver, options=QOS0) as mediator:
            with pytest.raises(RuntimeError):
                await mediator.send(SaveFailing(name="a"))
        assert journal.lines == ["begin", "rollback"]


class TestChains:
    async def test_chain_is_composed_once_and_cached(self) -> None:
        """Many sends of one type compose its chain once (the resolver is asked once)."""
        resolver = DictResolver()
        async with Mediator(HandlerRegistry(greet), resolver=resolver) as mediator:
            for name in "abc":
                await mediator.send(Greet(name=name))
        assert resolver.lookups == ["greeting"]

    async def test_each_qos_level_gets_its_own_chain(self) -> None:
        """A per-call QoS composes a chain for that level (with its own behaviours)."""
        resolver = DictResolver()
        async with Mediator(HandlerRegistry(greet), resolver=resolver) as mediator:
            await mediator.send(Greet(name="a"), qos=0)
            await mediator.send(Greet(name="a"), qos=1)
            await mediator.send(Greet(name="a"), qos=0)
        assert resolver.lookups == ["greeting", "greeting"]


class TestRouteFor:
    def test_exact_type_wins(self) -> None:
        """An entry for the type itself beats any module prefix."""
        routes: dict[Any, str] = {Greet: "greetings", __name__: "module"}
        assert route_for(Greet, routes) == "greetings"

    def test_longest_module_prefix_wins(self) -> None:
        """Among module prefixes, the longest matching one is used."""
        routes: dict[Any, str] = {"tests": "short", "tests.unit": "long", "tests.u": "partial"}
        assert route_for(Greet, routes) == "long"

    def test_prefix_must_end_at_a_dot(self) -> None:
        """'tests.u' does not match module 'tests.unit'."""
        assert route_for(Greet, {"tests.u": "partial"}) is None

    def test_full_dotted_name_matches(self) -> None:
        """A string key may name one type by its dotted path."""
        assert route_for(Greet, {f"{__name__}.Greet": "one"}) == "one"

    def test_unmatched_type_stays_in_process(self) -> None:
        """No matching entry means no route."""
        assert route_for(Greet, {Save: "saves", "other.module": "x"}) is None


class TestResultType:
    def test_command_result_type(self) -> None:
        """R of Command[R] is found, also through a subclass."""
        assert result_type_of(Greet) is str
        assert result_type_of(Nested) == list[int]
        assert result_type_of(NestedChild) == list[int]

    def test_unknown_result_type_is_any(self) -> None:
        """A command without a concrete R, or an event, yields Any."""
        assert result_type_of(Open) is Any
        assert result_type_of(Noticed) is Any
