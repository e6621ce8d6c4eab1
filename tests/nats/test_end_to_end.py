"""Mediator + Worker over NATS: routed commands, events and QoS 2, across two 'processes'."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
from attrs import frozen

from catga import (
    CatgaOptions,
    Command,
    Event,
    HandlerRegistry,
    Mediator,
    QoS,
    RetryPolicy,
    Worker,
    handles,
)
from catga.exceptions import RemoteHandlerError
from catga_nats import NatsConfig, NatsIdempotencyStore, NatsTransport

from ..helpers import eventually

pytestmark = pytest.mark.nats


@frozen(kw_only=True)
class Add(Command[int]):
    a: int
    b: int


@frozen(kw_only=True)
class Charge(Command[str]):
    amount: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Shipped(Event):
    order_id: str


@frozen(kw_only=True)
class Logged(Event):
    line: str
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


ROUTES = {Add: "math", Charge: "payments", Shipped: "orders", Logged: "logs"}
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.01)


def handlers(calls: Counter[str]) -> HandlerRegistry:
    @handles(Add)
    async def add(cmd: Add) -> int:
        calls[f"add:{cmd.a}"] += 1
        if cmd.a < 0:
            raise RuntimeError("negative")
        return cmd.a + cmd.b

    @handles(Charge)
    async def charge(cmd: Charge) -> str:
        calls[f"charge:{cmd.message_id}"] += 1
        await asyncio.sleep(0.01)
        return f"charged {cmd.amount}"

    @handles(Shipped)
    async def shipped(event: Shipped) -> None:
        calls[f"shipped:{event.order_id}"] += 1

    @handles(Logged)
    async def logged(event: Logged) -> None:
        calls[f"logged:{event.line}"] += 1

    return HandlerRegistry(add, charge, shipped, logged)


@pytest.fixture
def calls() -> Counter[str]:
    return Counter()


@pytest.fixture
async def sender(config: NatsConfig) -> AsyncIterator[Mediator]:
    """A process that only sends."""
    async with NatsTransport(config) as transport:
        registry = HandlerRegistry()
        registry.add_types(Add, Charge, Shipped, Logged)
        options = CatgaOptions(routes=ROUTES, request_timeout=5.0, retry=FAST_RETRY)
        async with Mediator(registry, options=options, transport=transport) as mediator:
            yield mediator


@pytest.fixture
async def receivers(config: NatsConfig, calls: Counter[str]) -> AsyncIterator[list[Mediator]]:
    """Two processes with the handlers, sharing the NATS KV store's buckets."""
    made: list[Mediator] = []
    closers = []
    for _ in range(2):
        transport = NatsTransport(config)
        await transport.connect()
        store = NatsIdempotencyStore(config)
        options = CatgaOptions(routes=ROUTES, retry=FAST_RETRY)
        made.append(Mediator(handlers(calls), options=options, transport=transport, store=store))
        closers.extend([transport.aclose, store.aclose])
    yield made
    for mediator in made:
        await mediator.aclose()
    for close in closers:
        await close()


class TestEndToEnd:
    async def test_send_is_request_reply(self, sender: Mediator, receivers: list[Mediator]) -> None:
        """A routed command is handled by a worker and its result comes back."""
        async with Worker(receivers[0]):
            assert await sender.send(Add(a=2, b=3)) == 5

    async def test_handler_error_comes_back_as_remote_error(
        self, sender: Mediator, receivers: list[Mediator], calls: Counter[str]
    ) -> None:
        """A command that keeps failing is dead-lettered and the caller gets RemoteHandlerError."""
        async with Worker(receivers[0]):
            with pytest.raises(RemoteHandlerError) as caught:
                await sender.send(Add(a=-1, b=0))
        assert caught.value.error_type == "RuntimeError"
        assert calls["add:-1"] == FAST_RETRY.max_attempts
        [letter] = await receivers[0].transport.dead_letters("math")  # type: ignore[union-attr]
        assert "failed after 3 deliveries" in letter.reason

    async def test_qos2_duplicates_run_once_and_share_the_result(
        self, sender: Mediator, receivers: list[Mediator], calls: Counter[str]
    ) -> None:
        """One QoS 2 command sent 5 times to 2 workers runs once; every caller gets its result."""
        command = Charge(amount=7)
        async with Worker(receivers[0], busy_delay=0.05), Worker(receivers[1], busy_delay=0.05):
            results = await asyncio.gather(*(sender.send(command) for _ in range(5)))
            again = await sender.send(command)
        assert results == ["charged 7"] * 5
        assert again == "charged 7"
        assert calls[f"charge:{command.message_id}"] == 1

    async def test_events_durable_and_fire_and_forget(
        self, sender: Mediator, receivers: list[Mediator], calls: Counter[str]
    ) -> None:
        """Durable events published before the worker starts are handled; QoS 0 reaches it live."""
        await sender.publish_many([Shipped(order_id=f"o{i}") for i in range(20)])
        async with Worker(receivers[0]), Worker(receivers[1]):
            await eventually(lambda: all(calls[f"shipped:o{i}"] == 1 for i in range(20)))
            await asyncio.sleep(0)  # let the QoS 0 subscriptions reach the server
            await receivers[0].transport.client.flush()  # type: ignore[union-attr]
            await receivers[1].transport.client.flush()  # type: ignore[union-attr]
            await sender.publish(Logged(line="hi"))
            await eventually(lambda: calls["logged:hi"] == 1)
