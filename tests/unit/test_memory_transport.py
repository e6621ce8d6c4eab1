"""What only the in-memory transport does: options, bounds, back-pressure, replay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs

from catga import InMemoryBroker, InMemoryTransport, InMemoryTransportOptions, QoS
from catga._memory_broker import _Signal
from catga.exceptions import DeadLetterError, NotConnectedError, QueueFullError
from catga.typing import Delivery, Envelope

Q1 = QoS.AT_LEAST_ONCE


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms until it is truthy; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def envelope(message_id: str | None = None, *, qos: int = 1) -> Envelope:
    mid = f"m-{uuid.uuid4().hex}" if message_id is None else message_id
    return Envelope(message_id=mid, message_type="test.Ping", body=b"{}", qos=qos)


class Recorder:
    """Records deliveries and keeps them, so a test can settle them later."""

    def __init__(self, act: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._act = act

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self._act is not None:
            await self._act(delivery)

    @property
    def seen(self) -> list[tuple[str, int]]:
        return [(d.envelope.message_id, d.delivery_count) for d in self.deliveries]


async def ack(delivery: Delivery) -> None:
    await delivery.ack()


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def route() -> str:
    return f"unit.{uuid.uuid4().hex}"


@pytest.fixture
async def connect(
    broker: InMemoryBroker,
) -> AsyncIterator[Callable[..., Awaitable[InMemoryTransport]]]:
    """Make connected transports on the test's broker with the given options."""
    made: list[InMemoryTransport] = []

    async def make(**options: Any) -> InMemoryTransport:
        transport = InMemoryTransport(broker, options=InMemoryTransportOptions(**options))
        made.append(transport)
        await transport.connect()
        return transport

    yield make
    for transport in made:
        await transport.aclose()
    broker.close()


Connect = Callable[..., Awaitable[InMemoryTransport]]


class TestOptions:
    def test_defaults(self) -> None:
        """The defaults are the documented ones."""
        options = InMemoryTransportOptions()
        assert attrs.asdict(options) == {
            "ack_wait": 30.0,
            "max_deliveries": 5,
            "max_queue": 10_000,
            "publish_timeout": 5.0,
            "dedup_window": 120.0,
            "dedup_max": 100_000,
            "dlq_max": 10_000,
        }

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("ack_wait", 0),
            ("max_deliveries", 0),
            ("max_queue", 0),
            ("publish_timeout", -1),
            ("dedup_window", 0),
            ("dedup_max", 0),
            ("dlq_max", -5),
        ],
    )
    def test_out_of_range_values_are_refused(self, name: str, value: float) -> None:
        """Each limit is validated."""
        with pytest.raises(ValueError, match=name):
            InMemoryTransportOptions(**{name: value})  # type: ignore[arg-type]

    def test_counts_must_be_ints(self) -> None:
        """Counts are whole numbers."""
        with pytest.raises(TypeError, match="max_queue"):
            InMemoryTransportOptions(max_queue=1.5)  # type: ignore[arg-type]

    def test_frozen_and_keyword_only(self) -> None:
        """Options are immutable and keyword-only."""
        options = InMemoryTransportOptions(ack_wait=1.0)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            options.ack_wait = 2.0  # type: ignore[misc]
        with pytest.raises(TypeError):
            InMemoryTransportOptions(1.0)  # type: ignore[call-arg]


class TestBackPressure:
    async def test_full_queue_raises_after_publish_timeout(
        self, connect: Connect, route: str
    ) -> None:
        """With no consumer, a publish into a full queue raises QueueFullError."""
        transport = await connect(max_queue=2, publish_timeout=0.05)
        await transport.publish_many(route, [envelope(), envelope()], qos=Q1)
        with pytest.raises(QueueFullError, match="max_queue"):
            await transport.publish(route, envelope(), qos=Q1)

    async def test_full_group_raises_too(self, connect: Connect, route: str) -> None:
        """A group holding max_queue unsettled messages refuses more."""
        transport = await connect(max_queue=1, publish_timeout=0.01)
        held = Recorder()
        await transport.subscribe(route, held, group="g", qos=Q1)
        await transport.publish(route, envelope(), qos=Q1)
        await eventually(lambda: held.deliveries)
        with pytest.raises(QueueFullError):
            await transport.publish(route, envelope(), qos=Q1)

    async def test_waiting_publish_proceeds_once_a_message_is_acked(
        self, connect: Connect, route: str
    ) -> None:
        """A publish blocked by a full queue completes when a consumer acks."""
        transport = await connect(max_queue=1, publish_timeout=5.0)
        first, second = envelope(), envelope()
        await transport.publish(route, first, qos=Q1)
        held = Recorder()
        await transport.subscribe(route, held, group="g", qos=Q1)
        await eventually(lambda: held.deliveries)
        blocked = asyncio.create_task(transport.publish(route, second, qos=Q1))
        await asyncio.sleep(0)
        assert not blocked.done()
        await held.deliveries[0].ack()
        await blocked
        await eventually(lambda: len(held.deliveries) == 2)
        assert held.seen == [(first.message_id, 1), (second.message_id, 1)]


class TestDedup:
    async def test_qos1_is_not_deduplicated(self, connect: Connect, route: str) -> None:
        """Only QoS 2 deduplicates: the same id at QoS 1 is stored twice."""
        transport = await connect()
        sent = envelope()
        await transport.publish_many(route, [sent, sent], qos=Q1)
        seen = Recorder(ack)
        await transport.subscribe(route, seen, group="g", qos=Q1)
        await eventually(lambda: len(seen.deliveries) == 2)

    async def test_dedup_table_is_bounded(self, connect: Connect, route: str) -> None:
        """Past dedup_max the oldest id is forgotten, so it is accepted again."""
        transport = await connect(dedup_max=2)
        a, b, c = envelope("a", qos=2), envelope("b", qos=2), envelope("c", qos=2)
        await transport.publish_many(route, [a, b, c, a, c], qos=QoS.EXACTLY_ONCE)
        seen = Recorder(ack)
        await transport.subscribe(route, seen, group="g", qos=Q1, concurrency=1)
        await eventually(lambda: len(seen.deliveries) == 4)
        assert [mid for mid, _ in seen.seen] == ["a", "b", "c", "a"]

    async def test_ids_are_forgotten_after_the_window(self, route: str) -> None:
        """Once dedup_window has passed, the same id is stored again."""
        now = [0.0]
        broker = InMemoryBroker(clock=lambda: now[0])
        options = InMemoryTransportOptions(dedup_window=10.0)
        async with InMemoryTransport(broker, options=options) as transport:
            sent = envelope(qos=2)
            await transport.publish(route, sent, qos=QoS.EXACTLY_ONCE)
            now[0] = 9.0
            await transport.publish(route, sent, qos=QoS.EXACTLY_ONCE)
            now[0] = 20.0
            await transport.publish(route, sent, qos=QoS.EXACTLY_ONCE)
            seen = Recorder(ack)
            await transport.subscribe(route, seen, group="g", qos=Q1)
            await eventually(lambda: len(seen.deliveries) == 2)

    async def test_duplicate_stored_while_waiting_for_room_is_dropped(
        self, connect: Connect, route: str
    ) -> None:
        """Two QoS 2 publishes of one id blocked on a full queue store it once."""
        transport = await connect(max_queue=1)
        held = Recorder()
        await transport.subscribe(route, held, group="g", qos=Q1)
        await transport.publish(route, envelope(), qos=Q1)
        await eventually(lambda: held.deliveries)
        duplicate = envelope(qos=2)
        first, second = (
            asyncio.create_task(transport.publish(route, duplicate, qos=QoS.EXACTLY_ONCE))
            for _ in range(2)
        )
        await asyncio.sleep(0)  # both are now waiting for room
        await held.deliveries[0].ack()
        await first
        await eventually(lambda: len(held.deliveries) == 2)
        assert not second.done()
        await held.deliveries[1].ack()
        await second
        sentinel = envelope()
        await transport.publish(route, sentinel, qos=Q1)
        await eventually(lambda: len(held.deliveries) == 3)
        assert [mid for mid, _ in held.seen[1:]] == [duplicate.message_id, sentinel.message_id]


class TestDeadLetters:
    async def test_dlq_is_bounded_oldest_dropped(self, connect: Connect, route: str) -> None:
        """Past dlq_max the oldest dead letter is dropped, with a warning."""
        transport = await connect(dlq_max=2)

        async def reject(delivery: Delivery) -> None:
            await delivery.dead_letter(f"bad {delivery.envelope.message_id}")

        sent = [envelope(f"d{i}") for i in range(3)]
        with capture_logs() as logs:
            await transport.subscribe(route, reject, group="g", qos=Q1, concurrency=1)
            await transport.publish_many(route, sent, qos=Q1)
            await eventually(
                lambda: any(log["event"].startswith("dead-letter queue full") for log in logs)
            )
        dead = await transport.dead_letters(route)
        assert [d.reason for d in dead] == ["bad d1", "bad d2"]
        assert [d.envelope.message_id for d in await transport.dead_letters(route, limit=1)] == [
            "d1"
        ]

    async def test_unknown_route_has_no_dead_letters(self, connect: Connect) -> None:
        """A route never used has an empty DLQ."""
        transport = await connect()
        assert await transport.dead_letters("nowhere") == []

    async def test_max_deliveries_logs_a_warning(self, connect: Connect, route: str) -> None:
        """Dead-lettering past max_deliveries is logged as a warning with the reason."""
        transport = await connect(max_deliveries=1)

        async def nack(delivery: Delivery) -> None:
            await delivery.nack()

        with capture_logs() as logs:
            await transport.subscribe(route, nack, group="g", qos=Q1)
            await transport.publish(route, envelope(), qos=Q1)
            await eventually(lambda: logs)
        assert logs[0]["log_level"] == "warning"
        assert logs[0]["reason"] == "max deliveries (1) exceeded"

    async def test_replay_republishes_and_removes(
        self, broker: InMemoryBroker, connect: Connect, route: str
    ) -> None:
        """replay_dead_letter delivers the message afresh and takes it out of the DLQ."""
        transport = await connect()
        sent = envelope(qos=2)

        async def reject_first(delivery: Delivery) -> None:
            if len(seen.deliveries) == 1:
                await delivery.dead_letter("first time")
            else:
                await delivery.ack()

        seen = Recorder(reject_first)
        await transport.subscribe(route, seen, group="g", qos=Q1)
        await transport.publish(route, sent, qos=QoS.EXACTLY_ONCE)
        await eventually(lambda: broker._routes[route].dlq)
        [dead] = await transport.dead_letters(route)
        await transport.replay_dead_letter(route, dead.id)
        await eventually(lambda: len(seen.deliveries) == 2)
        assert seen.seen == [(sent.message_id, 1), (sent.message_id, 1)]
        assert await transport.dead_letters(route) == []
        with pytest.raises(DeadLetterError, match=dead.id):
            await transport.replay_dead_letter(route, dead.id)

    async def test_replay_of_an_unknown_route_raises(self, connect: Connect) -> None:
        """Replaying from a route that has no DLQ raises DeadLetterError."""
        transport = await connect()
        with pytest.raises(DeadLetterError):
            await transport.replay_dead_letter("nowhere", "1")


class TestRedelivery:
    async def test_in_progress_pushes_the_deadline_back(self, connect: Connect, route: str) -> None:
        """A handler that keeps calling in_progress is not redelivered past ack_wait."""
        transport = await connect(ack_wait=0.5)
        busy, canary = envelope(), envelope()
        seen = Recorder()
        await transport.subscribe(route, seen, group="g", qos=Q1)
        await transport.publish(route, busy, qos=Q1)
        await eventually(lambda: seen.deliveries)
        await transport.publish(route, canary, qos=Q1)
        # The canary is left unsettled; when it comes back, ack_wait has passed for busy too.
        while (canary.message_id, 2) not in seen.seen:
            await seen.deliveries[0].in_progress()
            await asyncio.sleep(0.01)
        assert [count for mid, count in seen.seen if mid == busy.message_id] == [1]

    async def test_stale_settles_are_no_ops(self, connect: Connect, route: str) -> None:
        """Settling a delivery that was redelivered since, or settling twice, does nothing."""
        transport = await connect(ack_wait=0.05)
        seen = Recorder()
        await transport.subscribe(route, seen, group="g", qos=Q1)
        await transport.publish(route, envelope(), qos=Q1)
        await eventually(lambda: len(seen.deliveries) == 2)
        stale, current = seen.deliveries[:2]
        await stale.ack()
        await stale.nack()
        await stale.dead_letter("too late")
        await stale.in_progress()
        await current.nack()  # the current one still counts
        await eventually(lambda: any(count == 3 for _, count in seen.seen))
        await seen.deliveries[-1].ack()
        await seen.deliveries[-1].ack()
        assert await transport.dead_letters(route) == []

    async def test_handler_errors_are_logged(self, connect: Connect, route: str) -> None:
        """A handler raising is logged as an error with the message id, and nacked."""
        transport = await connect()
        sent = envelope()

        async def boom(delivery: Delivery) -> None:
            if delivery.delivery_count == 1:
                raise ValueError("boom")
            await delivery.ack()

        seen = Recorder(boom)
        with capture_logs() as logs:
            await transport.subscribe(route, seen, group="g", qos=Q1)
            await transport.publish(route, sent, qos=Q1)
            await eventually(lambda: len(seen.deliveries) == 2)
        [error] = [log for log in logs if log["log_level"] == "error"]
        assert error["message_id"] == sent.message_id
        assert error["exc_info"] is True

    async def test_broker_close_cancels_timers(
        self, broker: InMemoryBroker, connect: Connect, route: str
    ) -> None:
        """Closing the broker cancels its timers; delayed messages are ready again."""
        transport = await connect()

        async def later(delivery: Delivery) -> None:
            await delivery.nack(delay=60)

        seen = Recorder(later)
        await transport.subscribe(route, seen, group="g", qos=Q1)
        await transport.publish(route, envelope(), qos=Q1)
        await eventually(lambda: seen.deliveries)
        group = broker._routes[route].groups["g"]
        assert group._timed
        assert not group.ready
        broker.close()
        assert not group._timed
        assert [item.envelope for item in group.ready] == [seen.deliveries[0].envelope]


class TestGroups:
    async def test_late_group_reads_the_retained_log(self, connect: Connect, route: str) -> None:
        """A group created later starts at the oldest retained message (XGROUP CREATE 0)."""
        transport = await connect(max_queue=2)
        first = Recorder(ack)
        await transport.subscribe(route, first, group="first", qos=Q1, concurrency=1)
        sent = [envelope() for _ in range(3)]
        for item in sent:
            await transport.publish(route, item, qos=Q1)
            await eventually(lambda: len(first.deliveries) == sent.index(item) + 1)  # noqa: B023
        late = Recorder(ack)
        await transport.subscribe(route, late, group="late", qos=Q1, concurrency=1)
        await eventually(lambda: len(late.deliveries) == 2)
        assert [mid for mid, _ in late.seen] == [e.message_id for e in sent[1:]]

    async def test_qos0_group_members_share_messages(self, connect: Connect, route: str) -> None:
        """QoS 0 subscribers of one group take turns; another group gets every message."""
        transport = await connect()
        one, two, all_ = Recorder(), Recorder(), Recorder()
        sub_one = await transport.subscribe(route, one, group="g", qos=QoS.AT_MOST_ONCE)
        await transport.subscribe(route, two, group="g", qos=QoS.AT_MOST_ONCE)
        await transport.subscribe(route, all_, group="h", qos=QoS.AT_MOST_ONCE)
        await transport.publish_many(
            route, [envelope(qos=0) for _ in range(4)], qos=QoS.AT_MOST_ONCE
        )
        await eventually(
            lambda: len(one.deliveries) + len(two.deliveries) == 4 and len(all_.deliveries) == 4
        )
        assert len(one.deliveries) == len(two.deliveries) == 2
        await sub_one.aclose()
        await transport.publish(route, envelope(qos=0), qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: len(two.deliveries) == 3)

    async def test_slow_qos0_subscriber_drops_with_a_warning(
        self, connect: Connect, route: str
    ) -> None:
        """A QoS 0 subscriber whose buffer is full drops new messages and warns once."""
        transport = await connect(max_queue=1)
        release = asyncio.Event()

        async def stuck(delivery: Delivery) -> None:
            await release.wait()

        seen = Recorder(stuck)
        await transport.subscribe(route, seen, group="g", qos=QoS.AT_MOST_ONCE, concurrency=1)
        await transport.publish(route, envelope(qos=0), qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: seen.deliveries)
        with capture_logs() as logs:
            for _ in range(3):  # one is buffered, two are dropped
                await transport.publish(route, envelope(qos=0), qos=QoS.AT_MOST_ONCE)
        assert [log["log_level"] for log in logs] == ["warning"]
        release.set()
        await eventually(lambda: len(seen.deliveries) == 2)

    async def test_concurrency_must_be_positive(self, connect: Connect, route: str) -> None:
        """concurrency < 1 is refused."""
        transport = await connect()
        with pytest.raises(ValueError, match="concurrency"):
            await transport.subscribe(route, Recorder(), group="g", qos=Q1, concurrency=0)


class TestLifecycle:
    async def test_own_broker_and_reconnect(self, route: str) -> None:
        """A transport without a broker has a private one and can connect again after aclose."""
        transport = InMemoryTransport()
        assert transport.options == InMemoryTransportOptions()
        assert isinstance(transport.broker, InMemoryBroker)
        async with transport:
            await transport.publish(route, envelope(), qos=Q1)
        with pytest.raises(NotConnectedError, match="closed"):
            await transport.publish(route, envelope(), qos=Q1)
        await transport.connect()
        seen = Recorder(ack)
        await transport.subscribe(route, seen, group="g", qos=Q1)
        await eventually(lambda: seen.deliveries)
        await transport.aclose()

    async def test_aclose_before_connect(self) -> None:
        """aclose on a transport never connected is fine."""
        transport = InMemoryTransport()
        await transport.aclose()
        with pytest.raises(NotConnectedError):
            await transport.reply(envelope(), envelope())

    async def test_aclose_fails_waiting_requests(self, connect: Connect, route: str) -> None:
        """A request still waiting when its transport closes raises NotConnectedError."""
        transport = await connect()
        other = await connect()
        seen = Recorder()
        await other.subscribe(route, seen, group="g", qos=Q1)
        waiting = asyncio.create_task(transport.request(route, envelope(), timeout=30))
        await eventually(lambda: seen.deliveries)
        await transport.aclose()
        with pytest.raises(NotConnectedError, match="before the reply"):
            await waiting
        await other.reply(seen.deliveries[0].envelope, envelope())  # nobody waits: dropped
        await other.reply(envelope(), envelope())  # no reply_to: dropped

    async def test_handlers_may_publish_and_nobody_subscribes_while_closing(
        self, broker: InMemoryBroker, connect: Connect, route: str
    ) -> None:
        """During aclose in-flight handlers still publish, but new subscriptions are refused."""
        transport = await connect()
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(delivery: Delivery) -> None:
            entered.set()
            await release.wait()
            await transport.publish(route + ".out", envelope(), qos=Q1)
            await delivery.ack()

        await transport.subscribe(route, slow, group="g", qos=Q1)
        await transport.publish(route, envelope(), qos=Q1)
        await entered.wait()
        closing = asyncio.create_task(transport.aclose())
        await asyncio.sleep(0)
        with pytest.raises(NotConnectedError, match="closing"):
            await transport.subscribe(route, Recorder(), group="g", qos=Q1)
        await transport.aclose()  # a second close while the first runs returns at once
        release.set()
        await closing
        assert len(broker._routes[route + ".out"].log) == 1

    async def test_subscription_closed_from_its_own_handler(
        self, connect: Connect, route: str
    ) -> None:
        """A handler may close its own subscription without deadlocking."""
        transport = await connect()
        closed = asyncio.Event()

        async def stop(delivery: Delivery) -> None:
            await delivery.ack()
            await subscription.aclose()
            closed.set()

        subscription = await transport.subscribe(route, stop, group="g", qos=Q1)
        await transport.publish(route, envelope(), qos=Q1)
        await asyncio.wait_for(closed.wait(), timeout=5.0)


class TestRunner:
    async def test_a_broken_source_is_logged(
        self, connect: Connect, route: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If a subscription's loop dies, that is logged as an error, not lost."""
        transport = await connect()

        async def broken(self: object) -> Delivery:
            raise RuntimeError("bug")

        monkeypatch.setattr("catga._memory_transport._GroupSource.get", broken)
        with capture_logs() as logs:
            await transport.subscribe(route, Recorder(), group="g", qos=Q1)
            await eventually(lambda: logs)
        assert logs[0]["event"] == "subscription stopped"
        assert logs[0]["log_level"] == "error"


class TestSignal:
    async def test_a_cancelled_wakeup_is_passed_on(self) -> None:
        """A waiter woken and then cancelled hands its wake-up to the next waiter."""
        signal = _Signal()
        first = asyncio.create_task(signal.wait())
        second = asyncio.create_task(signal.wait())
        await asyncio.sleep(0)
        signal.wake_one()
        first.cancel()
        await asyncio.wait_for(second, timeout=5.0)
        assert first.cancelled()

    async def test_a_cancelled_waiter_leaves_the_queue(self) -> None:
        """A waiter cancelled before any wake-up is forgotten."""
        signal = _Signal()
        waiter = asyncio.create_task(signal.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        signal.wake_all()

    async def test_a_cancelled_waiter_skipped_by_a_wakeup(self) -> None:
        """A waiter cancelled and then skipped by wake_one before it runs ends cleanly."""
        signal = _Signal()
        waiter = asyncio.create_task(signal.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        signal.wake_one()
        with pytest.raises(asyncio.CancelledError):
            await waiter
