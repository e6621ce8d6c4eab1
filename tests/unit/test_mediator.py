"""The mediator: send, publish, QoS in process, user behaviours, batches, replay, routing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import uuid
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from attrs import frozen
from structlog.testing import capture_logs

from catga import (
    CatgaOptions,
    Command,
    Event,
    HandlerRegistry,
    InMemoryDeadLetterQueue,
    InMemoryIdempotencyStore,
    Mediator,
    Order,
    QoS,
    RetryPolicy,
    handles,
)
from catga.exceptions import (
    CatgaError,
    ConfigurationError,
    DeadLetterError,
    HandlerNotFoundError,
    InProgressError,
    MessageKindError,
    PublishError,
    RemoteHandlerError,
    SerializationError,
)
from catga.typing import Envelope, Next

FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)
OPTIONS = CatgaOptions(retry=FAST)


def uid() -> str:
    """A message id unique to the calling test."""
    return f"test-{uuid.uuid4().hex}"


async def wait_for(event: asyncio.Event) -> None:
    """Wait for an event, failing the test instead of hanging."""
    async with asyncio.timeout(5):
        await event.wait()


@frozen(kw_only=True)
class Add(Command[int]):
    a: int
    b: int


@frozen(kw_only=True)
class Reserve(Command[str]):
    sku: str
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Ratio(Command[float]):
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Unhandled(Command[None]):
    pass


@frozen(kw_only=True)
class Receipt:
    seat: str
    price: Decimal
    issued_at: datetime
    extras: list[str]


@frozen(kw_only=True)
class BookSeat(Command[Receipt]):
    seat: str
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class BookLater(Command["LateReceipt"]):
    """A command whose result class is defined further down (a forward reference)."""

    seat: str
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class LateReceipt:
    seat: str


@frozen(kw_only=True)
class Shipped(Event):
    order_id: str = "o-1"


@frozen(kw_only=True)
class Ticked(Event):
    pass


class Abort(BaseException):
    """Not an Exception: like KeyboardInterrupt, it must not be swallowed or wrapped."""


class _Probe:
    """A handler with knobs: a result, failures to raise first, and gates to block on."""

    def __init__(
        self,
        result: Any = None,
        *,
        failures: int = 0,
        error: type[BaseException] = RuntimeError,
        gate: asyncio.Event | None = None,
        fail_at_gate: bool = False,
    ) -> None:
        self.result = result
        self.failures = failures
        self.error = error
        self.gate = gate
        self.fail_at_gate = fail_at_gate
        self.calls: list[Any] = []
        self.started = asyncio.Event()
        self.finished = asyncio.Event()

    async def handle(self, message: Any) -> Any:
        self.calls.append(message)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
                if self.fail_at_gate:
                    raise self.error("failed after the gate")
            if len(self.calls) <= self.failures:
                raise self.error(f"call {len(self.calls)} failed")
            return self.result(message) if callable(self.result) else self.result
        finally:
            self.finished.set()


@handles(Add, Reserve, Ratio, BookSeat, BookLater, Shipped, Ticked)
class Primary(_Probe):
    pass


@handles(Shipped, Ticked)
class Secondary(_Probe):
    pass


@handles(Shipped)
class Meets(_Probe):
    """Reaches a barrier that every handler of the event must reach."""

    def __init__(self, barrier: asyncio.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    async def handle(self, message: Any) -> Any:
        async with asyncio.timeout(5):
            await self.barrier.wait()
        return await super().handle(message)


@handles(Shipped)
class Notifier(_Probe):
    """A handler class meant to be registered more than once, e.g. per channel."""


@handles(Add)
async def add(command: Add) -> int:
    return command.a + command.b


class RecordingTransport:
    """A Transport that records what it is given and answers requests with ``reply``."""

    def __init__(self, reply: Envelope | None = None) -> None:
        self.reply_envelope = reply
        self.published: list[tuple[str, Envelope, QoS]] = []
        self.batches: list[tuple[str, list[Envelope], QoS]] = []
        self.requests: list[tuple[str, Envelope, float]] = []

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> RecordingTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def publish(self, route: str, envelope: Envelope, *, qos: QoS) -> None:
        self.published.append((route, envelope, qos))

    async def publish_many(self, route: str, envelopes: Sequence[Envelope], *, qos: QoS) -> None:
        self.batches.append((route, list(envelopes), qos))

    async def request(self, route: str, envelope: Envelope, *, timeout: float) -> Envelope:
        self.requests.append((route, envelope, timeout))
        assert self.reply_envelope is not None
        return self.reply_envelope

    async def reply(self, request: Envelope, reply: Envelope) -> None:
        return None

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def dead_letters(self, route: str, limit: int = 100) -> list[Any]:
        return []


class FakeDelivery:
    """A Delivery as a worker would pass it (settling is the worker's job, not tested here)."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.delivery_count = 1

    async def ack(self) -> None:
        return None

    async def nack(self, delay: float = 0.0) -> None:
        return None

    async def dead_letter(self, reason: str) -> None:
        return None

    async def in_progress(self) -> None:
        return None


def delivery(mediator: Mediator, message: Any, qos: QoS) -> FakeDelivery:
    """Wrap a message in an envelope and a delivery, as a transport would hand it over."""
    return FakeDelivery(
        Envelope(
            message_id=message.message_id,
            message_type=type(message).__qualname__,
            body=mediator.serializer.encode(message),
            qos=int(qos),
        )
    )


class TestSend:
    async def test_returns_the_handler_result(self) -> None:
        """send returns what the command's handler returned."""
        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            assert await mediator.send(Add(a=2, b=3)) == 5

    async def test_no_handler_names_the_type(self) -> None:
        """send with no handler raises HandlerNotFoundError naming the command type."""
        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            with pytest.raises(HandlerNotFoundError, match="Unhandled") as caught:
                await mediator.send(Unhandled())
        assert caught.value.message_type is Unhandled
        assert isinstance(caught.value, LookupError)

    async def test_send_of_an_event_is_a_kind_error(self) -> None:
        """send takes Commands only, whether or not the event has handlers."""
        async with Mediator(HandlerRegistry(Primary()), options=OPTIONS) as mediator:
            with pytest.raises(MessageKindError, match="publish"):
                await mediator.send(Shipped())  # type: ignore[arg-type]
            with pytest.raises(MessageKindError):
                await mediator.send(Ticked(), qos=0)  # type: ignore[arg-type]
        assert isinstance(MessageKindError(), TypeError)

    async def test_qos0_send_waits_for_the_result(self) -> None:
        """At QoS 0 the caller still gets the result, and the handler ran once."""
        handler = Primary(result=lambda c: c.a * c.b)
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            assert await mediator.send(Add(a=3, b=4), qos=QoS.AT_MOST_ONCE) == 12
        assert len(handler.calls) == 1

    async def test_qos0_send_failure_runs_once_and_raises(self) -> None:
        """At QoS 0 a failing handler runs once, its error reaches the caller, no dead letter."""
        handler = Primary(failures=1, error=ValueError)
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            with pytest.raises(ValueError, match="call 1 failed"):
                await mediator.send(Add(a=1, b=1), qos=0)
        assert len(handler.calls) == 1
        assert len(mediator.dead_letters) == 0

    async def test_default_qos_from_options(self) -> None:
        """A type without a qos ClassVar uses CatgaOptions.default_qos (here: no retry)."""
        handler = Primary(failures=1)
        options = CatgaOptions(default_qos=QoS.AT_MOST_ONCE, retry=FAST)
        async with Mediator(HandlerRegistry(handler), options=options) as mediator:
            with pytest.raises(RuntimeError):
                await mediator.send(Add(a=1, b=1))
        assert len(handler.calls) == 1

    async def test_per_call_qos_overrides_the_type(self) -> None:
        """qos= on the call beats the type's ClassVar: QoS 1 reruns a duplicate id."""
        handler = Primary(result="reserved")
        command = Reserve(sku="s", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            await mediator.send(command, qos=QoS.AT_LEAST_ONCE)
            await mediator.send(command, qos=1)
        assert len(handler.calls) == 2


class TestPublish:
    async def test_no_handler_is_fine(self) -> None:
        """publish of an event nobody handles is not an error, at any QoS."""
        async with Mediator(options=OPTIONS) as mediator:
            for qos in QoS:
                await mediator.publish(Ticked(), qos=qos)

    async def test_every_handler_runs(self) -> None:
        """All handlers of an event receive it."""
        first, second = Primary(), Secondary()
        event = Shipped()
        async with Mediator(HandlerRegistry(first, second), options=OPTIONS) as mediator:
            await mediator.publish(event)
        assert first.calls == [event]
        assert second.calls == [event]

    async def test_handlers_run_concurrently(self) -> None:
        """Handlers of one event run at the same time: each waits at a barrier for the other."""
        barrier = asyncio.Barrier(2)
        first, second = Meets(barrier), Meets(barrier)
        async with Mediator(HandlerRegistry(first, second), options=OPTIONS) as mediator:
            await mediator.publish(Shipped())
        assert len(first.calls) == len(second.calls) == 1

    async def test_one_failure_does_not_stop_the_others(self) -> None:
        """A failing handler is reported in PublishError.errors; the other handler ran."""
        failing, healthy = Primary(failures=99, error=KeyError), Secondary()
        event = Shipped()
        async with Mediator(HandlerRegistry(failing, healthy), options=OPTIONS) as mediator:
            with pytest.raises(PublishError) as caught:
                await mediator.publish(event)
        ((name, error),) = caught.value.errors
        assert name == f"{__name__}.Primary"
        assert isinstance(error, KeyError)
        assert caught.value.message_id == event.message_id
        assert healthy.calls == [event]
        assert len(failing.calls) == 3

    async def test_base_exception_is_not_wrapped(self) -> None:
        """A handler raising a BaseException (not an Exception) propagates it as is."""
        aborting, healthy = Primary(failures=1, error=Abort), Secondary()
        async with Mediator(HandlerRegistry(aborting, healthy), options=OPTIONS) as mediator:
            with pytest.raises(Abort):
                await mediator.publish(Ticked())
        assert len(healthy.calls) == 1
        assert len(mediator.dead_letters) == 0

    async def test_publish_of_a_command_is_a_kind_error(self) -> None:
        """publish takes Events only."""
        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            with pytest.raises(MessageKindError, match="send"):
                await mediator.publish(Add(a=1, b=2))  # type: ignore[arg-type]

    async def test_qos0_returns_before_the_handler_finishes(self) -> None:
        """At QoS 0 publish schedules the handler and returns; aclose waits for it."""
        gate = asyncio.Event()
        handler = Primary(gate=gate)
        mediator = Mediator(HandlerRegistry(handler), options=OPTIONS)
        await mediator.publish(Ticked(), qos=QoS.AT_MOST_ONCE)
        assert not handler.finished.is_set()
        assert mediator.in_flight == 1
        await wait_for(handler.started)
        gate.set()
        await mediator.aclose()
        assert handler.finished.is_set()
        assert mediator.in_flight == 0

    async def test_qos0_failure_is_logged_not_retried_not_raised(self) -> None:
        """A QoS 0 handler failure is logged at error, runs once, and does not reach the caller."""
        handler = Primary(failures=5, error=ConnectionError)
        event = Ticked()
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
                await mediator.publish(event, qos=0)
        assert len(handler.calls) == 1
        (entry,) = logs
        assert entry["event"] == "handler failed"
        assert entry["log_level"] == "error"
        assert entry["message_id"] == event.message_id
        assert entry["qos"] == 0
        assert len(mediator.dead_letters) == 0


class TestExactlyOnce:
    async def test_duplicate_id_runs_the_handler_once(self) -> None:
        """Two sends with one message_id run the handler once and return equal results."""
        handler = Primary(result=lambda c: f"reserved {c.sku}")
        message_id = uid()
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            first = await mediator.send(Reserve(sku="a", message_id=message_id))
            second = await mediator.send(Reserve(sku="a", message_id=message_id))
        assert first == second == "reserved a"
        assert len(handler.calls) == 1

    async def test_duplicate_gets_an_equal_structured_result(self) -> None:
        """A stored attrs result (Decimal, datetime, list) decodes back equal and typed."""
        receipt = Receipt(
            seat="1A",
            price=Decimal("99.90"),
            issued_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            extras=["meal"],
        )
        handler = Primary(result=receipt)
        command = BookSeat(seat="1A", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            first = await mediator.send(command)
            second = await mediator.send(command)
        assert first == second == receipt
        assert isinstance(second, Receipt)
        assert len(handler.calls) == 1

    async def test_forward_referenced_result_type_is_resolved(self) -> None:
        """Command["LateReceipt"] stores and answers duplicates with a LateReceipt."""
        handler = Primary(result=lambda c: LateReceipt(seat=c.seat))
        command = BookLater(seat="2B", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            first = await mediator.send(command)
            second = await mediator.send(command)
        assert first == second == LateReceipt(seat="2B")

    async def test_type_qos_classvar_makes_it_exactly_once(self) -> None:
        """The type's qos ClassVar beats CatgaOptions.default_qos."""
        handler = Primary(result="ok")
        options = CatgaOptions(default_qos=QoS.AT_MOST_ONCE)
        command = Reserve(sku="a", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=options) as mediator:
            await mediator.send(command)
            await mediator.send(command)
        assert len(handler.calls) == 1

    async def test_per_call_qos2(self) -> None:
        """qos=2 on the call makes any command exactly-once."""
        handler = Primary(result=lambda c: c.a + c.b)
        command = Add(a=1, b=2, message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            assert await mediator.send(command, qos=2) == 3
            assert await mediator.send(command, qos=2) == 3
        assert len(handler.calls) == 1

    async def test_distinct_ids_each_run(self) -> None:
        """Different message ids are different messages."""
        handler = Primary(result="ok")
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            await mediator.send(Reserve(sku="a", message_id=uid()))
            await mediator.send(Reserve(sku="a", message_id=uid()))
        assert len(handler.calls) == 2

    async def test_concurrent_duplicates_run_once(self) -> None:
        """Twenty concurrent sends of one id run the handler once; all get equal results."""
        gate = asyncio.Event()
        handler = Primary(result=lambda c: f"reserved {c.sku}", gate=gate)
        command = Reserve(sku="x", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            tasks = [asyncio.create_task(mediator.send(command)) for _ in range(20)]
            await wait_for(handler.started)
            gate.set()
            async with asyncio.timeout(5):
                results = await asyncio.gather(*tasks)
        assert results == ["reserved x"] * 20
        assert len(handler.calls) == 1

    async def test_failed_attempt_does_not_poison_the_id(self) -> None:
        """A failure releases the key: the same id sent again runs and succeeds."""
        handler = Primary(result="ok", failures=1)
        command = Reserve(sku="a", message_id=uid())
        options = CatgaOptions(retry=RetryPolicy(max_attempts=1))
        async with Mediator(HandlerRegistry(handler), options=options) as mediator:
            with pytest.raises(RuntimeError):
                await mediator.send(command)
            assert await mediator.send(command) == "ok"
            assert await mediator.send(command) == "ok"
        assert len(handler.calls) == 2

    async def test_concurrent_duplicates_share_a_failure(self) -> None:
        """Duplicates waiting on a failing attempt get its error; the id is then free again."""
        gate = asyncio.Event()
        handler = Primary(result="ok", gate=gate, fail_at_gate=True)
        command = Reserve(sku="a", message_id=uid())
        options = CatgaOptions(retry=RetryPolicy(max_attempts=1))
        async with Mediator(HandlerRegistry(handler), options=options) as mediator:
            tasks = [asyncio.create_task(mediator.send(command)) for _ in range(3)]
            await wait_for(handler.started)
            gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, RuntimeError) for r in results)
            handler.fail_at_gate = False
            assert await mediator.send(command) == "ok"
        assert len(handler.calls) == 2

    async def test_concurrent_failing_duplicates_dead_letter_once(self) -> None:
        """Duplicates of one failing QoS 2 command leave one dead letter, not one per caller."""
        gate = asyncio.Event()
        handler = Primary(gate=gate, fail_at_gate=True)
        command = Reserve(sku="a", message_id=uid())
        options = CatgaOptions(retry=RetryPolicy(max_attempts=1))
        async with Mediator(HandlerRegistry(handler), options=options) as mediator:
            tasks = [asyncio.create_task(mediator.send(command)) for _ in range(5)]
            await wait_for(handler.started)
            gate.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert len(handler.calls) == 1
        assert len(mediator.dead_letters) == 1

    async def test_cancelling_the_first_caller_does_not_cancel_duplicates(self) -> None:
        """A duplicate waiting on an attempt whose caller is cancelled still gets a result."""
        gate = asyncio.Event()
        handler = Primary(result="ok", gate=gate)
        command = Reserve(sku="a", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            owner = asyncio.create_task(mediator.send(command))
            await wait_for(handler.started)
            duplicate = asyncio.create_task(mediator.send(command))
            await asyncio.sleep(0)  # let the duplicate join the running attempt
            owner.cancel()
            gate.set()
            async with asyncio.timeout(5):
                result = await asyncio.gather(duplicate, return_exceptions=True)
        assert result == ["ok"]

    async def test_unencodable_result_raises_and_releases_the_key(self) -> None:
        """A result the serializer cannot store raises SerializationError and frees the id."""
        handler = Primary(result=lambda c: object())
        store = InMemoryIdempotencyStore()
        command = Reserve(sku="a", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS, store=store) as mediator:
            with pytest.raises(SerializationError):
                await mediator.send(command)
            assert len(store) == 0
            handler.result = "fine now"
            assert await mediator.send(command) == "fine now"
        assert len(handler.calls) == 2
        assert len(mediator.dead_letters) == 0

    async def test_non_finite_result_is_answered_to_duplicates(self) -> None:
        """A duplicate gets the same float result even when it is NaN (or the first call fails)."""
        handler = Primary(result=math.nan)
        command = Ratio(message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            try:
                first = await mediator.send(command)
            except SerializationError:
                return  # refusing a result the store cannot keep is acceptable too
            second = await mediator.send(command)
        assert math.isnan(first)
        assert math.isnan(second)

    async def test_event_handlers_each_run_once_per_id(self) -> None:
        """At QoS 2 each event handler has its own key: both run once per message_id."""
        first, second = Primary(), Secondary()
        event = Shipped(message_id=uid())
        async with Mediator(HandlerRegistry(first, second), options=OPTIONS) as mediator:
            await mediator.publish(event, qos=2)
            await mediator.publish(event, qos=2)
        assert len(first.calls) == 1
        assert len(second.calls) == 1

    async def test_event_handler_failure_does_not_rerun_the_others(self) -> None:
        """A republished QoS 2 event reruns only the handler that failed."""
        failing, healthy = Primary(failures=1), Secondary()
        event = Shipped(message_id=uid())
        options = CatgaOptions(retry=RetryPolicy(max_attempts=1))
        async with Mediator(HandlerRegistry(failing, healthy), options=options) as mediator:
            with pytest.raises(PublishError):
                await mediator.publish(event, qos=2)
            await mediator.publish(event, qos=2)
        assert len(failing.calls) == 2
        assert len(healthy.calls) == 1

    async def test_two_instances_of_one_handler_class_each_run(self) -> None:
        """Two registered instances of one class are two handlers, each run once at QoS 2."""
        email, sms = Notifier(), Notifier()
        event = Shipped(message_id=uid())
        async with Mediator(HandlerRegistry(email, sms), options=OPTIONS) as mediator:
            await mediator.publish(event, qos=2)
        assert len(email.calls) == 1
        assert len(sms.calls) == 1

    async def test_cancelled_duplicate_does_not_disturb_the_attempt(self) -> None:
        """A waiting duplicate may be cancelled; the running attempt and others finish."""
        gate = asyncio.Event()
        handler = Primary(result="ok", gate=gate)
        command = Reserve(sku="a", message_id=uid())
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            owner = asyncio.create_task(mediator.send(command))
            await wait_for(handler.started)
            impatient = asyncio.create_task(mediator.send(command))
            patient = asyncio.create_task(mediator.send(command))
            await asyncio.sleep(0)  # let both duplicates join the running attempt
            impatient.cancel()
            gate.set()
            async with asyncio.timeout(5):
                assert await asyncio.gather(owner, patient) == ["ok", "ok"]
        assert impatient.cancelled()
        assert len(handler.calls) == 1


class TestUserBehaviors:
    async def test_behavior_wraps_every_type(self) -> None:
        """A behaviour added without message_types sees commands and events."""
        seen: list[str] = []

        async def record(message: Any, ctx: Any, next: Next) -> Any:
            seen.append(type(message).__name__)
            return await next(message, ctx)

        async with Mediator(HandlerRegistry(Primary(result=1)), options=OPTIONS) as mediator:
            mediator.add_behavior(record)
            await mediator.send(Add(a=1, b=1))
            await mediator.publish(Ticked())
        assert seen == ["Add", "Ticked"]

    async def test_behaviors_given_at_construction(self) -> None:
        """Mediator(behaviors=[...]) adds them at Order.USER."""
        seen: list[int] = []

        async def record(message: Any, ctx: Any, next: Next) -> Any:
            seen.append(ctx.attempt)
            return await next(message, ctx)

        registry = HandlerRegistry(Primary(result=1, failures=1))
        async with Mediator(registry, options=OPTIONS, behaviors=[record]) as mediator:
            await mediator.send(Add(a=1, b=1))
        assert seen == [1, 2]

    async def test_per_type_behavior(self) -> None:
        """A behaviour limited to message_types only wraps those types."""
        seen: list[str] = []

        async def record(message: Any, ctx: Any, next: Next) -> Any:
            seen.append(type(message).__name__)
            return await next(message, ctx)

        async with Mediator(HandlerRegistry(Primary(result=1)), options=OPTIONS) as mediator:
            mediator.add_behavior(record, message_types=[Ticked])
            await mediator.send(Add(a=1, b=1))
            await mediator.publish(Ticked())
            await mediator.publish(Shipped())
        assert seen == ["Ticked"]

    async def test_user_order_runs_once_per_attempt(self) -> None:
        """At Order.USER a behaviour sits inside retry and sees ctx.attempt grow."""
        attempts: list[int] = []

        async def record(message: Any, ctx: Any, next: Next) -> Any:
            attempts.append(ctx.attempt)
            return await next(message, ctx)

        handler = Primary(result=1, failures=2)
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            mediator.add_behavior(record, order=Order.USER)
            await mediator.send(Add(a=1, b=1))
        assert attempts == [1, 2, 3]

    async def test_low_order_runs_outside_logging(self) -> None:
        """At order 50 a behaviour wraps logging: the failure it recovers is still logged."""

        async def recover(message: Any, ctx: Any, next: Next) -> Any:
            try:
                return await next(message, ctx)
            except RuntimeError:
                return -1

        handler = Primary(failures=1)
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
                mediator.add_behavior(recover, order=50)
                assert await mediator.send(Add(a=1, b=1), qos=0) == -1
        assert [e["event"] for e in logs] == ["handler failed"]

    async def test_user_order_runs_inside_logging(self) -> None:
        """At the default order a recovered failure never reaches the logging behaviour."""

        async def recover(message: Any, ctx: Any, next: Next) -> Any:
            try:
                return await next(message, ctx)
            except RuntimeError:
                return -1

        handler = Primary(failures=1)
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
                mediator.add_behavior(recover)
                assert await mediator.send(Add(a=1, b=1), qos=0) == -1
        assert logs == []

    async def test_equal_orders_run_in_the_order_added(self) -> None:
        """Behaviours of equal order wrap in the order they were added (first is outermost)."""
        trail: list[str] = []

        def tracer(name: str) -> Any:
            async def behavior(message: Any, ctx: Any, next: Next) -> Any:
                trail.append(name)
                return await next(message, ctx)

            return behavior

        async with Mediator(HandlerRegistry(Primary(result=1)), options=OPTIONS) as mediator:
            mediator.add_behavior(tracer("late"), order=700)
            mediator.add_behavior(tracer("a"))
            mediator.add_behavior(tracer("b"))
            mediator.add_behavior(tracer("early"), order=Order.LOGGING - 1)
            await mediator.send(Add(a=1, b=1))
        assert trail == ["early", "a", "b", "late"]

    async def test_behavior_can_replace_the_result(self) -> None:
        """What a behaviour returns is what the caller gets."""

        async def double(message: Any, ctx: Any, next: Next) -> Any:
            return 2 * await next(message, ctx)

        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            mediator.add_behavior(double)
            assert await mediator.send(Add(a=2, b=3)) == 10

    async def test_add_behavior_invalidates_cached_chains(self) -> None:
        """A behaviour added after a type's chain was built applies to the next dispatch."""
        seen: list[int] = []

        async def record(message: Any, ctx: Any, next: Next) -> Any:
            seen.append(message.a)
            return await next(message, ctx)

        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            await mediator.send(Add(a=1, b=0))
            mediator.add_behavior(record)
            await mediator.send(Add(a=2, b=0))
        assert seen == [2]


class TestRegistryChanges:
    async def test_handler_registered_after_first_publish_is_picked_up(self) -> None:
        """A handler added to the registry after the type's chain was cached is used."""
        first, second = Primary(), Secondary()
        registry = HandlerRegistry(first)
        async with Mediator(registry, options=OPTIONS) as mediator:
            await mediator.publish(Ticked())
            registry.register(second)
            await mediator.publish(Ticked())
        assert len(first.calls) == 2
        assert len(second.calls) == 1

    async def test_command_handler_registered_after_a_miss(self) -> None:
        """A command that had no handler works once one is registered."""
        registry = HandlerRegistry()
        async with Mediator(registry, options=OPTIONS) as mediator:
            with pytest.raises(HandlerNotFoundError):
                await mediator.send(Add(a=1, b=1))
            registry.register(add)
            assert await mediator.send(Add(a=1, b=1)) == 2


class TestBatches:
    async def test_send_many_returns_results_in_order(self) -> None:
        """send_many returns one result per command, in the order given."""
        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            results = await mediator.send_many([Add(a=i, b=i) for i in range(10)])
            assert await mediator.send_many([]) == []
        assert results == [2 * i for i in range(10)]

    async def test_send_many_raises_after_all_ran(self) -> None:
        """A failing command does not stop the others; its error is raised at the end."""

        def result(command: Add) -> int:
            if command.a == 1:
                raise ValueError("one is bad")
            return command.a

        handler = Primary(result=result)
        commands = [Add(a=i, b=0) for i in range(4)]
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            with pytest.raises(ValueError, match="one is bad"):
                await mediator.send_many(commands, qos=0)
        assert {c.a for c in handler.calls} == {0, 1, 2, 3}

    async def test_publish_many_runs_every_event(self) -> None:
        """publish_many delivers each event to its handlers."""
        handler = Primary()
        events = [Ticked(), Shipped(), Ticked()]
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            await mediator.publish_many(events)
            await mediator.publish_many([])
        assert sorted(e.message_id for e in handler.calls) == sorted(e.message_id for e in events)

    async def test_publish_many_raises_after_all_ran(self) -> None:
        """A failing event handler is raised (as PublishError) only after every event ran."""
        failing, healthy = Primary(failures=99), Secondary()
        events = [Ticked(), Ticked(), Ticked()]
        options = CatgaOptions(retry=RetryPolicy(max_attempts=1))
        registry = HandlerRegistry(failing, healthy)
        async with Mediator(registry, options=options) as mediator:
            with pytest.raises(PublishError):
                await mediator.publish_many(events)
        assert len(healthy.calls) == 3
        assert len(failing.calls) == 3


class TestDeadLetterReplay:
    async def test_replay_reruns_only_the_failed_handler(self) -> None:
        """Replaying an event's dead letter runs the handler that failed, not the others."""
        failing, healthy = Primary(failures=3, result="recovered"), Secondary()
        event = Shipped()
        async with Mediator(HandlerRegistry(failing, healthy), options=OPTIONS) as mediator:
            with pytest.raises(PublishError):
                await mediator.publish(event)
            (entry,) = mediator.dead_letters.entries()
            assert entry.handler == f"{__name__}.Primary"
            assert await mediator.replay_dead_letter(entry.id) == "recovered"
        assert len(failing.calls) == 4
        assert healthy.calls == [event]
        assert len(mediator.dead_letters) == 0

    async def test_replay_of_a_command_returns_its_result(self) -> None:
        """A replayed command returns its handler's result."""
        handler = Primary(failures=3, result=lambda c: c.a + c.b)
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            with pytest.raises(RuntimeError):
                await mediator.send(Add(a=20, b=22))
            (entry,) = mediator.dead_letters.entries()
            assert await mediator.replay_dead_letter(entry.id) == 42

    async def test_replay_failing_again_is_dead_lettered_again(self) -> None:
        """A replay that fails for good goes back to the queue under a new id."""
        handler = Primary(failures=99)
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            with pytest.raises(RuntimeError):
                await mediator.send(Add(a=1, b=1))
            (first,) = mediator.dead_letters.entries()
            with pytest.raises(RuntimeError):
                await mediator.replay_dead_letter(first.id)
            (second,) = mediator.dead_letters.entries()
        assert second.id != first.id
        assert second.message is first.message

    async def test_replay_without_the_handler(self) -> None:
        """Replaying on a mediator that lacks the failed handler raises HandlerNotFoundError."""
        queue = InMemoryDeadLetterQueue()
        handler = Primary(failures=99)
        async with (
            Mediator(HandlerRegistry(handler), options=OPTIONS, dead_letters=queue) as failing,
            Mediator(HandlerRegistry(add), options=OPTIONS, dead_letters=queue) as other,
        ):
            with pytest.raises(PublishError):
                await failing.publish(Ticked())
            (entry,) = queue.entries()
            with pytest.raises(HandlerNotFoundError):
                await other.replay_dead_letter(entry.id)

    async def test_failed_replay_keeps_the_dead_letter(self) -> None:
        """A replay that fails without being dead-lettered again leaves the entry in the queue."""
        queue = InMemoryDeadLetterQueue()
        async with (
            Mediator(
                HandlerRegistry(Primary(failures=99)), options=OPTIONS, dead_letters=queue
            ) as a,
            Mediator(HandlerRegistry(add), options=OPTIONS, dead_letters=queue) as b,
        ):
            with pytest.raises(PublishError):
                await a.publish(Ticked())
            (entry,) = queue.entries()
            with pytest.raises(HandlerNotFoundError):
                await b.replay_dead_letter(entry.id)
        assert [e.message for e in queue.entries()] == [entry.message]

    async def test_unknown_id_is_a_dead_letter_error(self) -> None:
        """Replaying an id that is not in the queue raises DeadLetterError."""
        async with Mediator(options=OPTIONS) as mediator:
            with pytest.raises(DeadLetterError, match="12345"):
                await mediator.replay_dead_letter(12345)


class TestRouting:
    def test_routes_without_transport_are_a_configuration_error(self) -> None:
        """CatgaOptions.routes needs a transport."""
        with pytest.raises(ConfigurationError, match="transport"):
            Mediator(options=CatgaOptions(routes={Shipped: "shipping"}))

    async def test_routed_event_goes_to_the_transport(self) -> None:
        """publish of a routed event hands its envelope to the transport, not to handlers."""
        transport = RecordingTransport()
        handler = Primary()
        event = Shipped(order_id="o-9", correlation_id="c-1")
        options = CatgaOptions(routes={Shipped: "shipping"})
        registry = HandlerRegistry(handler)
        async with Mediator(registry, options=options, transport=transport) as mediator:
            await mediator.publish(event, qos=2)
            ((route, envelope, qos),) = transport.published
            assert mediator.serializer.decode(envelope.body, Shipped) == event
        assert route == "shipping"
        assert qos is QoS.EXACTLY_ONCE
        assert envelope.message_id == event.message_id
        assert envelope.message_type == "Shipped"
        assert envelope.qos == 2
        assert envelope.correlation_id == "c-1"
        assert envelope.created_at == event.created_at
        assert handler.calls == []

    async def test_routed_command_is_request_reply(self) -> None:
        """send of a routed command returns the decoded reply body."""
        transport = RecordingTransport(Envelope(message_id="r", message_type="int", body=b"7"))
        options = CatgaOptions(routes={"tests.unit": "unit"}, request_timeout=3.0)
        async with Mediator(options=options, transport=transport) as mediator:
            assert await mediator.send(Add(a=3, b=4)) == 7
        ((route, envelope, timeout),) = transport.requests
        assert (route, envelope.message_type, timeout) == ("unit", "Add", 3.0)

    async def test_remote_error_reply_raises(self) -> None:
        """An error reply becomes RemoteHandlerError with the remote type and text."""
        reply = Envelope(
            message_id="r", message_type="", body=b"", error_type="KeyError", error_message="k"
        )
        transport = RecordingTransport(reply)
        command = Add(a=1, b=1)
        options = CatgaOptions(routes={Add: "adds"})
        async with Mediator(options=options, transport=transport) as mediator:
            with pytest.raises(RemoteHandlerError) as caught:
                await mediator.send(command)
        assert (caught.value.error_type, caught.value.error_message) == ("KeyError", "k")
        assert caught.value.message_id == command.message_id

    async def test_send_of_a_routed_event_is_a_kind_error(self) -> None:
        """A routed event cannot be sent."""
        transport = RecordingTransport()
        options = CatgaOptions(routes={Shipped: "shipping"})
        async with Mediator(options=options, transport=transport) as mediator:
            with pytest.raises(MessageKindError):
                await mediator.send(Shipped())  # type: ignore[arg-type]
        assert transport.requests == []

    async def test_publish_of_a_routed_command_is_a_kind_error(self) -> None:
        """publish of a routed command raises MessageKindError and publishes nothing."""
        transport = RecordingTransport()
        options = CatgaOptions(routes={Add: "adds"})
        async with Mediator(options=options, transport=transport) as mediator:
            with pytest.raises(MessageKindError):
                await mediator.publish(Add(a=1, b=1))  # type: ignore[arg-type]
        assert transport.published == []

    async def test_publish_many_batches_routed_events_per_route(self) -> None:
        """Routed events go in one batch per route; unrouted ones run locally."""
        transport = RecordingTransport()
        handler = Primary()
        options = CatgaOptions(routes={Shipped: "shipping"})
        shipped = [Shipped(order_id="a"), Shipped(order_id="b")]
        ticked = Ticked()
        registry = HandlerRegistry(handler)
        async with Mediator(registry, options=options, transport=transport) as mediator:
            await mediator.publish_many([shipped[0], ticked, shipped[1]], qos=1)
        ((route, envelopes, qos),) = transport.batches
        assert route == "shipping"
        assert [e.message_id for e in envelopes] == [e.message_id for e in shipped]
        assert qos is QoS.AT_LEAST_ONCE
        assert handler.calls == [ticked]

    async def test_local_routes_lists_routes_with_local_handlers(self) -> None:
        """local_routes maps each route with a local handler to the QoS levels it carries."""
        transport = RecordingTransport()
        options = CatgaOptions(routes={Shipped: "shipping", Reserve: "stock", Ticked: "ticks"})
        registry = HandlerRegistry(Primary())
        registry.add_types(Unhandled)
        async with Mediator(registry, options=options, transport=transport) as mediator:
            assert mediator.local_routes() == {
                "shipping": {QoS.AT_LEAST_ONCE},
                "ticks": {QoS.AT_LEAST_ONCE},
                "stock": {QoS.EXACTLY_ONCE},
            }
            mediator.check()


class TestDispatchDelivered:
    async def test_delivered_command_returns_the_result(self) -> None:
        """A command from a broker runs through the local pipeline and returns the result."""
        async with Mediator(HandlerRegistry(add), options=OPTIONS) as mediator:
            command = Add(a=5, b=6)
            assert await mediator.dispatch_delivered(command, delivery(mediator, command, 1)) == 11

    async def test_delivered_failure_is_not_retried_or_dead_lettered(self) -> None:
        """From a broker, retry and dead-lettering are the worker's job, not the pipeline's."""
        handler = Primary(failures=1)
        async with Mediator(HandlerRegistry(handler), options=OPTIONS) as mediator:
            command = Add(a=1, b=1)
            with pytest.raises(RuntimeError):
                await mediator.dispatch_delivered(command, delivery(mediator, command, 1))
        assert len(handler.calls) == 1
        assert len(mediator.dead_letters) == 0

    async def test_delivered_event_runs_every_handler(self) -> None:
        """An event from a broker reaches every local handler and returns None."""
        first, second = Primary(), Secondary()
        event = Ticked()
        async with Mediator(HandlerRegistry(first, second), options=OPTIONS) as mediator:
            assert await mediator.dispatch_delivered(event, delivery(mediator, event, 2)) is None
            await mediator.dispatch_delivered(event, delivery(mediator, event, 2))
        assert first.calls == second.calls == [event]

    async def test_delivered_command_without_handler(self) -> None:
        """A delivered command nobody handles raises HandlerNotFoundError."""
        async with Mediator(options=OPTIONS) as mediator:
            command = Add(a=1, b=1)
            with pytest.raises(HandlerNotFoundError):
                await mediator.dispatch_delivered(command, delivery(mediator, command, 1))

    async def test_delivered_duplicate_in_progress_elsewhere_fails_fast(self) -> None:
        """A QoS 2 delivery whose id another process is running raises InProgressError at once."""
        gate = asyncio.Event()
        store = InMemoryIdempotencyStore()
        handler = Primary(result="ok", gate=gate)
        command = Reserve(sku="a", message_id=uid())
        async with (
            Mediator(HandlerRegistry(handler), options=OPTIONS, store=store) as here,
            Mediator(HandlerRegistry(Primary()), options=OPTIONS, store=store) as there,
        ):
            running = asyncio.create_task(here.send(command))
            await wait_for(handler.started)
            with pytest.raises(InProgressError):
                await there.dispatch_delivered(command, delivery(there, command, 2))
            gate.set()
            assert await running == "ok"
            assert await there.dispatch_delivered(command, delivery(there, command, 2)) == "ok"
        assert len(handler.calls) == 1


class TestLifecycle:
    async def test_async_with_returns_the_mediator_and_closes_it(self) -> None:
        """async with Mediator(...) yields the mediator and waits for QoS 0 work on exit."""
        gate = asyncio.Event()
        handler = Primary(gate=gate)
        mediator = Mediator(HandlerRegistry(handler), options=OPTIONS)
        async with mediator as entered:
            assert entered is mediator
            await mediator.publish(Ticked(), qos=0)
            gate.set()
        assert handler.finished.is_set()

    async def test_aclose_is_idempotent(self) -> None:
        """Closing twice is harmless."""
        mediator = Mediator(options=OPTIONS)
        await mediator.aclose()
        await mediator.aclose()

    async def test_qos0_publish_after_aclose_raises(self) -> None:
        """After aclose a QoS 0 publish is refused with CatgaError."""
        handler = Primary()
        mediator = Mediator(HandlerRegistry(handler), options=OPTIONS)
        await mediator.aclose()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with pytest.raises(CatgaError, match="closed"):
                await mediator.publish(Ticked(), qos=0)
            gc.collect()
        assert handler.calls == []

    async def test_refused_publish_leaves_no_unawaited_coroutine(self) -> None:
        """A publish refused because the mediator is closed creates no coroutine."""
        mediator = Mediator(HandlerRegistry(Primary()), options=OPTIONS)
        await mediator.aclose()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.suppress(CatgaError):
                await mediator.publish(Ticked(), qos=0)
            gc.collect()
        assert [str(w.message) for w in caught] == []
