"""catga.Mediator + catga.Worker over Redis, end to end (as tests/unit/test_worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from dependency_injector import containers, providers

from catga import (
    CatgaContainer,
    CatgaOptions,
    Envelope,
    HandlerRegistry,
    Mediator,
    QoS,
    Worker,
)
from catga.exceptions import RemoteHandlerError
from catga_redis import RedisConfig, RedisContainer, RedisIdempotencyStore, RedisTransport

from ..helpers import eventually
from ..unit.test_worker import (
    FAST_RETRY,
    ROUTES,
    Add,
    Charge,
    Effects,
    Logged,
    Shipped,
    handlers,
)

pytestmark = pytest.mark.redis

KEEPALIVE = 0.05


@pytest.fixture
def effects() -> Effects:
    return Effects()


@pytest.fixture
async def sender(make_config: Callable[..., RedisConfig]) -> AsyncIterator[Mediator]:
    """A process that only sends: no handlers, every type routed to Redis."""
    async with RedisTransport(make_config()) as transport:
        registry = HandlerRegistry()
        registry.add_types(Add, Charge, Shipped, Logged)
        options = CatgaOptions(routes=ROUTES, request_timeout=10.0, retry=FAST_RETRY)
        async with Mediator(registry, options=options, transport=transport) as mediator:
            yield mediator


@pytest.fixture
async def receiver(
    make_config: Callable[..., RedisConfig], effects: Effects
) -> AsyncIterator[Mediator]:
    """A process with the handlers and a Redis idempotency store; tests start its worker."""
    config = make_config(max_deliveries=10)
    store = RedisIdempotencyStore(config)
    async with RedisTransport(config) as transport:
        options = CatgaOptions(routes=ROUTES, retry=FAST_RETRY)
        async with Mediator(
            handlers(effects), options=options, transport=transport, store=store
        ) as mediator:
            yield mediator
    await store.aclose()


def worker(mediator: Mediator, **kwargs: Any) -> Worker:
    return Worker(mediator, keepalive=KEEPALIVE, busy_delay=0.01, **kwargs)


def raw(body: bytes, name: str, message_id: str) -> Envelope:
    return Envelope(message_id=message_id, message_type=name, body=body, qos=1)


class TestRouting:
    async def test_send_is_request_reply(self, sender: Mediator, receiver: Mediator) -> None:
        """A routed command is handled by the worker and its result comes back."""
        async with worker(receiver):
            assert await sender.send(Add(a=2, b=3)) == 5

    async def test_event_published_before_worker_starts(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A durable event waits in the stream until a worker consumes it."""
        await sender.publish(Shipped(order_id="o-1"))
        async with worker(receiver):
            await eventually(lambda: effects.calls["shipped:o-1"] == 1)

    async def test_publish_many_and_qos0(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A batch of durable events and a QoS 0 event are all handled."""
        async with worker(receiver) as running:
            assert "logs" in running.health().routes
            await sender.publish_many([Shipped(order_id=f"b-{i}") for i in range(20)])
            await sender.publish(Logged(line="hello"))
            await eventually(lambda: all(effects.calls[f"shipped:b-{i}"] for i in range(20)))
            await eventually(lambda: effects.calls["logged:hello"] == 1)


class TestFailures:
    async def test_failure_is_redelivered_then_handled(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A handler that fails once is nacked, redelivered by Redis and then succeeds."""
        effects.fail_times["shipped:o-2"] = 1
        async with worker(receiver) as running:
            await sender.publish(Shipped(order_id="o-2"))
            await eventually(lambda: running.health().handled == 1)
        assert effects.calls["shipped:o-2"] == 2

    async def test_failing_command_is_dead_lettered_and_raised_remotely(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """After max_attempts the caller gets RemoteHandlerError and Redis has the dead letter."""
        effects.fail_times["add:7"] = 100
        async with worker(receiver):
            with pytest.raises(RemoteHandlerError) as caught:
                await sender.send(Add(a=7, b=0))
            assert caught.value.error_type == "RuntimeError"
        (letter,) = await receiver.transport.dead_letters("math")  # type: ignore[union-attr]
        assert "failed after 3 deliveries" in letter.reason
        assert letter.delivery_count == 3

    @pytest.mark.parametrize(
        ("body", "name", "expected"),
        [
            (b"\x00\xffnot json", "Add", "undecodable: SerializationError"),
            (b"{}", "os.system", "undecodable: UnknownMessageTypeError"),
        ],
    )
    async def test_bad_input_is_dead_lettered_and_consumer_goes_on(
        self, sender: Mediator, receiver: Mediator, body: bytes, name: str, expected: str
    ) -> None:
        """A bad body or an unknown type goes to the Redis DLQ with a reason; work goes on."""
        transport = receiver.transport
        assert transport is not None
        async with worker(receiver):
            await transport.publish("math", raw(body, name, "junk-1"), qos=QoS.AT_LEAST_ONCE)

            async def dead() -> bool:
                return bool(await transport.dead_letters("math"))

            await eventually(dead)
            (letter,) = await transport.dead_letters("math")
            assert letter.reason.startswith(expected)
            assert await sender.send(Add(a=4, b=4)) == 8


class TestExactlyOnce:
    async def test_duplicate_requests_run_once(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """Ten requests with one id run the handler once and all get the same result."""
        async with worker(receiver):
            results = await asyncio.gather(
                *(sender.send(Charge(message_id="pay-1", amount=10)) for _ in range(10))
            )
        assert results == ["charged 10"] * 10
        assert effects.calls["charge:pay-1"] == 1

    async def test_later_duplicate_is_answered_from_the_store(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A retried QoS 2 request after the first completed returns the stored result."""
        async with worker(receiver):
            first = await sender.send(Charge(message_id="pay-3", amount=5))
            again = await sender.send(Charge(message_id="pay-3", amount=5))
        assert first == again == "charged 5"
        assert effects.calls["charge:pay-3"] == 1


class TestKeepalive:
    async def test_long_handler_is_not_taken_over(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A handler running past claim_idle keeps its entry through in_progress()."""
        effects.block = True
        async with worker(receiver) as running:
            reply = asyncio.ensure_future(sender.send(Add(a=3, b=3)))
            await effects.started.wait()
            # Not waiting for work: the handler must outlive claim_idle (0.3 s) twice, and
            # a takeover in that time would be a second call of the handler.
            await asyncio.sleep(0.7)
            effects.release.set()
            assert await reply == 6
            await eventually(lambda: running.health().handled == 1)
        assert effects.calls["add:3"] == 1


class TestContainer:
    async def test_redis_providers_plug_into_catga_container(
        self, make_config: Callable[..., RedisConfig], effects: Effects
    ) -> None:
        """RedisContainer's transport and store go into CatgaContainer; send works through it."""
        config = make_config()

        class App(containers.DeclarativeContainer):
            redis = providers.Container(RedisContainer, config=providers.Object(config))
            catga = providers.Container(
                CatgaContainer,
                registry=providers.Object(handlers(effects)),
                options=providers.Object(CatgaOptions(routes=ROUTES, request_timeout=10.0)),
                transport=redis.transport,
                idempotency_store=redis.idempotency_store,
            )

        app = App()
        transport = app.redis.transport()
        assert isinstance(transport, RedisTransport)
        await transport.connect()
        mediator = app.catga.mediator()
        assert mediator.transport is transport
        assert isinstance(mediator.store, RedisIdempotencyStore)
        try:
            async with worker(mediator):
                assert await mediator.send(Charge(message_id="pay-di", amount=1)) == "charged 1"
        finally:
            await mediator.aclose()
            await transport.aclose()
            await app.redis.idempotency_store().aclose()
