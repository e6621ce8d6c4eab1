"""The worker: routed messages over the in-memory transport, end to end."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from attrs import field, frozen, validators
from structlog.testing import capture_logs

from catga import (
    CatgaOptions,
    Command,
    Envelope,
    Event,
    HandlerRegistry,
    InMemoryBroker,
    InMemoryIdempotencyStore,
    InMemoryTransport,
    InMemoryTransportOptions,
    Mediator,
    QoS,
    RetryPolicy,
    Worker,
    WorkerState,
    handles,
)
from catga.exceptions import (
    ConfigurationError,
    RemoteHandlerError,
    RequestTimeoutError,
    TransportError,
)
from catga.typing import Delivery

from ..helpers import eventually


@frozen(kw_only=True)
class Add(Command[int]):
    a: int
    b: int = field(validator=validators.ge(0))


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


class Effects:
    """What the handlers did, for the test to check."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_times: dict[str, int] = {}
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.block = False

    def maybe_fail(self, key: str) -> None:
        self.calls[key] += 1
        if self.calls[key] <= self.fail_times.get(key, 0):
            raise RuntimeError(f"{key} failed on call {self.calls[key]}")


def handlers(effects: Effects) -> HandlerRegistry:
    @handles(Add)
    async def add(cmd: Add) -> int:
        effects.maybe_fail(f"add:{cmd.a}")
        if effects.block:
            effects.started.set()
            await effects.release.wait()
        return cmd.a + cmd.b

    @handles(Charge)
    async def charge(cmd: Charge) -> str:
        effects.calls[f"charge:{cmd.message_id}"] += 1
        await asyncio.sleep(0)
        return f"charged {cmd.amount}"

    @handles(Shipped)
    async def shipped(event: Shipped) -> None:
        effects.maybe_fail(f"shipped:{event.order_id}")

    @handles(Logged)
    async def logged(event: Logged) -> None:
        effects.calls[f"logged:{event.line}"] += 1

    return HandlerRegistry(add, charge, shipped, logged)


ROUTES = {Add: "math", Charge: "payments", Shipped: "orders", Logged: "logs"}
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.01)


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def effects() -> Effects:
    return Effects()


@pytest.fixture
async def sender(broker: InMemoryBroker) -> AsyncIterator[Mediator]:
    """A process that only sends: it has no handlers, every type is routed."""
    transport = InMemoryTransport(broker)
    await transport.connect()
    registry = HandlerRegistry()
    registry.add_types(Add, Charge, Shipped, Logged)
    options = CatgaOptions(routes=ROUTES, request_timeout=5.0, retry=FAST_RETRY)
    async with Mediator(registry, options=options, transport=transport) as mediator:
        yield mediator
    await transport.aclose()


@pytest.fixture
async def receiver(broker: InMemoryBroker, effects: Effects) -> AsyncIterator[Mediator]:
    """A process with the handlers; its worker is started by each test."""
    transport = InMemoryTransport(broker, options=InMemoryTransportOptions(max_deliveries=10))
    await transport.connect()
    options = CatgaOptions(routes=ROUTES, retry=FAST_RETRY)
    async with Mediator(handlers(effects), options=options, transport=transport) as mediator:
        yield mediator
    await transport.aclose()


class TestRouting:
    async def test_send_is_request_reply(self, sender: Mediator, receiver: Mediator) -> None:
        """A routed command is handled by the worker and its result comes back."""
        async with Worker(receiver):
            assert await sender.send(Add(a=2, b=3)) == 5

    async def test_event_published_before_worker_starts(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A durable event waits in the route until a worker consumes it."""
        await sender.publish(Shipped(order_id="o-1"))
        async with Worker(receiver):
            await eventually(lambda: effects.calls["shipped:o-1"] == 1)

    async def test_publish_many_routes_in_one_batch(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """publish_many hands every routed event over and each is handled."""
        await sender.publish_many([Shipped(order_id=f"b-{i}") for i in range(20)])
        async with Worker(receiver):
            await eventually(lambda: all(effects.calls[f"shipped:b-{i}"] for i in range(20)))

    async def test_qos0_event_reaches_a_subscribed_worker(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A QoS 0 routed event goes to the worker's fire-and-forget subscription."""
        async with Worker(receiver) as worker:
            assert "logs" in worker.health().routes
            await sender.publish(Logged(line="hello"))
            await eventually(lambda: effects.calls["logged:hello"] == 1)

    async def test_same_process_sender_and_worker(self, receiver: Mediator) -> None:
        """One mediator may both send over the route and consume it."""
        async with Worker(receiver):
            assert await receiver.send(Add(a=1, b=1)) == 2


class TestFailures:
    async def test_failure_is_redelivered_then_handled(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """A handler that fails once is nacked, redelivered and then succeeds."""
        effects.fail_times["shipped:o-2"] = 1
        async with Worker(receiver) as worker:
            await sender.publish(Shipped(order_id="o-2"))
            await eventually(lambda: worker.health().handled == 1)
            assert effects.calls["shipped:o-2"] == 2
            assert worker.health().retried == 1

    async def test_failing_command_is_dead_lettered_and_raised_remotely(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """After max_attempts deliveries the caller gets RemoteHandlerError and a dead letter."""
        effects.fail_times["add:7"] = 100
        async with Worker(receiver) as worker:
            with pytest.raises(RemoteHandlerError) as caught:
                await sender.send(Add(a=7, b=0))
            assert caught.value.error_type == "RuntimeError"
            assert worker.health().dead_lettered == 1
        assert effects.calls["add:7"] == FAST_RETRY.max_attempts
        (letter,) = await receiver.transport.dead_letters("math")  # type: ignore[union-attr]
        assert "failed after 3 deliveries" in letter.reason
        assert "RuntimeError" in letter.reason

    async def test_invalid_message_is_dead_lettered_at_once(
        self, broker: InMemoryBroker, receiver: Mediator, effects: Effects
    ) -> None:
        """A message that fails validation on arrival is not retried."""
        body = b'{"a": 1, "b": -5, "message_id": "bad-1"}'
        async with Worker(receiver), InMemoryTransport(broker) as raw:
            await raw.publish("math", _raw(body, "Add", "bad-1"), qos=QoS.AT_LEAST_ONCE)
            await eventually(lambda: _dead(raw, "math"))
            (letter,) = await raw.dead_letters("math")
        assert "'b' must be >= 0" in letter.reason
        assert letter.delivery_count == 1
        assert effects.calls["add:1"] == 0

    @pytest.mark.parametrize(
        ("body", "name", "expected"),
        [
            (b"\x00\xffnot json", "Add", "undecodable: SerializationError"),
            (b'{"a": "x", "b": 1}', "Add", "undecodable: SerializationError"),
            (b"{}", "os.system", "undecodable: UnknownMessageTypeError"),
        ],
    )
    async def test_bad_input_is_dead_lettered_and_consumer_goes_on(
        self,
        broker: InMemoryBroker,
        sender: Mediator,
        receiver: Mediator,
        body: bytes,
        name: str,
        expected: str,
    ) -> None:
        """Garbage and unknown types go to the DLQ with a reason; later messages still flow."""
        async with Worker(receiver), InMemoryTransport(broker) as raw:
            await raw.publish("math", _raw(body, name, "junk-1"), qos=QoS.AT_LEAST_ONCE)
            await eventually(lambda: _dead(raw, "math"))
            (letter,) = await raw.dead_letters("math")
            assert letter.reason.startswith(expected)
            assert await sender.send(Add(a=4, b=4)) == 8

    async def test_request_without_worker_times_out(self, broker: InMemoryBroker) -> None:
        """No consumer on the route: the caller gets RequestTimeoutError."""
        async with InMemoryTransport(broker) as transport:
            registry = HandlerRegistry()
            registry.add_types(Add)
            options = CatgaOptions(routes={Add: "nobody"}, request_timeout=0.05)
            mediator = Mediator(registry, options=options, transport=transport)
            with pytest.raises(RequestTimeoutError):
                await mediator.send(Add(a=1, b=1))


class TestExactlyOnce:
    async def test_duplicate_requests_run_once(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """Ten requests with one id run the handler once and all get the same result."""
        async with Worker(receiver):
            results = await asyncio.gather(
                *(sender.send(Charge(message_id="pay-1", amount=10)) for _ in range(10))
            )
        assert results == ["charged 10"] * 10
        assert effects.calls["charge:pay-1"] == 1

    async def test_busy_duplicate_is_nacked_until_done(
        self, broker: InMemoryBroker, effects: Effects
    ) -> None:
        """A key held by another process makes the worker nack, then answer from the store."""
        store = InMemoryIdempotencyStore()
        async with InMemoryTransport(broker) as transport:
            mediator = Mediator(
                handlers(effects),
                options=CatgaOptions(routes=ROUTES),
                transport=transport,
                store=store,
            )
            claim = await store.claim("Charge:pay-2", 30)
            async with Worker(mediator, busy_delay=0.01) as worker:
                reply = asyncio.ensure_future(mediator.send(Charge(message_id="pay-2", amount=1)))
                await eventually(lambda: worker.health().deferred >= 1)
                await store.complete("Charge:pay-2", claim.token, b'"from the store"', 60)  # type: ignore[union-attr]
                assert await reply == "from the store"
            assert effects.calls["charge:pay-2"] == 0

    async def test_busy_event_duplicate_is_deferred_not_failed(
        self, broker: InMemoryBroker, effects: Effects
    ) -> None:
        """A QoS 2 event whose handler key is held elsewhere is nacked as busy, not retried."""
        store = InMemoryIdempotencyStore()
        async with InMemoryTransport(broker) as transport:
            mediator = Mediator(
                handlers(effects),
                options=CatgaOptions(routes=ROUTES),
                transport=transport,
                store=store,
            )
            event = Shipped(order_id="o-9", message_id="evt-9")
            key = f"Shipped:{__name__}.handlers.<locals>.shipped:evt-9"
            claim = await store.claim(key, 30)
            async with Worker(mediator, busy_delay=0.01) as worker:
                await mediator.publish(event, qos=QoS.EXACTLY_ONCE)
                await eventually(lambda: worker.health().deferred >= 2)
                assert worker.health().retried == 0
                await store.release(key, claim.token)  # type: ignore[union-attr]
                await eventually(lambda: worker.health().handled == 1)
            assert effects.calls["shipped:o-9"] == 1


class FailingAck:
    """A delivery whose ack fails once, like a broker connection lost at that moment."""

    def __init__(self, inner: Delivery, failures: list[str]) -> None:
        self.inner = inner
        self.failures = failures

    @property
    def envelope(self) -> Envelope:
        return self.inner.envelope

    @property
    def delivery_count(self) -> int:
        return self.inner.delivery_count

    async def ack(self) -> None:
        if not self.failures:
            self.failures.append(self.envelope.message_id)
            raise TransportError("connection lost while acking")
        await self.inner.ack()

    async def nack(self, delay: float = 0.0) -> None:
        await self.inner.nack(delay)

    async def dead_letter(self, reason: str) -> None:
        await self.inner.dead_letter(reason)

    async def in_progress(self) -> None:
        await self.inner.in_progress()


class TestSettleFailures:
    async def test_failed_ack_is_logged_and_redelivered(
        self, broker: InMemoryBroker, effects: Effects
    ) -> None:
        """An ack that fails leaves the message with the broker; it comes back and is acked."""
        failures: list[str] = []
        options = InMemoryTransportOptions(ack_wait=0.05)
        async with InMemoryTransport(broker, options=options) as transport:
            subscribe = transport.subscribe

            async def wrapped(route: str, handler: Any, **kwargs: Any) -> Any:
                async def on_delivery(delivery: Delivery) -> None:
                    await handler(FailingAck(delivery, failures))

                return await subscribe(route, on_delivery, **kwargs)

            transport.subscribe = wrapped  # type: ignore[method-assign]
            mediator = Mediator(
                handlers(effects), options=CatgaOptions(routes=ROUTES), transport=transport
            )
            with capture_logs() as logs:
                async with Worker(mediator) as worker:
                    await mediator.publish(Shipped(order_id="o-ack"))
                    await eventually(lambda: worker.health().handled == 1)
        assert effects.calls["shipped:o-ack"] == 2
        assert any("will be redelivered" in line["event"] for line in logs)


class TestKeepalive:
    async def test_long_handler_is_not_redelivered(
        self, broker: InMemoryBroker, sender: Mediator, effects: Effects
    ) -> None:
        """A handler running past ack_wait keeps its delivery through in_progress()."""
        options = InMemoryTransportOptions(ack_wait=0.1)
        async with InMemoryTransport(broker, options=options) as transport:
            mediator = Mediator(
                handlers(effects), options=CatgaOptions(routes=ROUTES), transport=transport
            )
            effects.block = True
            async with Worker(mediator, keepalive=0.02) as worker:
                reply = asyncio.ensure_future(sender.send(Add(a=3, b=3)))
                await effects.started.wait()
                # Not waiting for work: the handler must outlive several ack_waits, and a
                # redelivery in that time would be a second call of the handler.
                await asyncio.sleep(0.35)
                effects.release.set()
                assert await reply == 6
                assert worker.health().handled == 1
            assert effects.calls["add:3"] == 1

    def test_keepalive_must_be_positive(self, receiver: Mediator) -> None:
        """keepalive=0 is refused at construction."""
        with pytest.raises(ConfigurationError, match="keepalive"):
            Worker(receiver, keepalive=0)


class TestLifecycle:
    async def test_stop_finishes_in_flight_work(
        self, sender: Mediator, receiver: Mediator, effects: Effects
    ) -> None:
        """stop() waits for the running handler and acks it; nothing is redelivered."""
        effects.block = True
        worker = Worker(receiver)
        await worker.start()
        reply = asyncio.ensure_future(sender.send(Add(a=5, b=5)))
        await effects.started.wait()
        stopping = asyncio.ensure_future(worker.stop())
        effects.release.set()
        await stopping
        assert await reply == 10
        assert worker.health().state is WorkerState.STOPPED
        assert worker.health().handled == 1
        await worker.stop()

    async def test_health_reports_routes(self, receiver: Mediator) -> None:
        """health() lists the subscribed routes and is healthy while running."""
        worker = Worker(receiver, routes=["math"])
        assert not worker.health().healthy
        async with worker:
            health = worker.health()
            assert health.healthy
            assert health.routes == ("math",)

    async def test_configuration_errors(self, receiver: Mediator, effects: Effects) -> None:
        """Bad worker wiring fails at start-up with a clear error."""
        with pytest.raises(ConfigurationError, match="transport"):
            Worker(Mediator(handlers(effects)))
        with pytest.raises(ConfigurationError, match="concurrency"):
            Worker(receiver, concurrency=0)
        with pytest.raises(ConfigurationError, match="nowhere"):
            await Worker(receiver, routes=["nowhere"]).start()
        worker = Worker(receiver)
        async with worker:
            with pytest.raises(ConfigurationError, match="running"):
                await worker.start()


def _raw(body: bytes, name: str, message_id: str) -> Envelope:
    return Envelope(message_id=message_id, message_type=name, body=body, qos=1)


async def _dead(transport: InMemoryTransport, route: str) -> bool:
    return bool(await transport.dead_letters(route))
