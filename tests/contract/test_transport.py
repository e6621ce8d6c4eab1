"""The transport contract: what every backend keeps, per QoS."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from catga import QoS
from catga.exceptions import NotConnectedError, RequestTimeoutError
from catga.typing import Delivery, Envelope, Subscription, Transport

from ..helpers import eventually
from .conftest import Backend, envelope

Act = Callable[[Delivery], Awaitable[None]]


async def ack(delivery: Delivery) -> None:
    await delivery.ack()


class Inbox:
    """A delivery handler that records ``(message_id, delivery_count)`` and then acts."""

    def __init__(self, act: Act = ack) -> None:
        self.seen: list[tuple[str, int]] = []
        self._act = act

    async def __call__(self, delivery: Delivery) -> None:
        self.seen.append((delivery.envelope.message_id, delivery.delivery_count))
        await self._act(delivery)

    def ids(self) -> list[str]:
        return [mid for mid, _ in self.seen]

    def counts(self, message_id: str) -> list[int]:
        return [count for mid, count in self.seen if mid == message_id]


def leave_first_unsettled(canary: str, act: Act = ack) -> Act:
    """Run ``act``, except on the canary's first delivery, which is left to time out."""

    async def run(delivery: Delivery) -> None:
        if delivery.envelope.message_id == canary and delivery.delivery_count == 1:
            return
        await act(delivery)

    return run


async def after_one_ack_wait(
    transport: Transport, route: str, canary: Envelope, inbox: Inbox
) -> None:
    """Publish a canary that times out once; when it is back, ``ack_wait`` has passed.

    Anything settled before the canary was delivered and wrongly kept pending would have
    timed out before the canary did, so it would have been redelivered by now.
    """
    await transport.publish(route, canary, qos=QoS.AT_LEAST_ONCE)
    await eventually(lambda: inbox.counts(canary.message_id) == [1, 2], what="canary redelivered")


class TestDurablePublish:
    async def test_publish_then_subscribe_receives_it(
        self, transport: Transport, route: str
    ) -> None:
        """A durable message published before anyone subscribes reaches the later subscriber."""
        sent = envelope(body=b'{"n": 1}')
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        inbox = Inbox()
        received: list[Envelope] = []

        async def keep(delivery: Delivery) -> None:
            received.append(delivery.envelope)
            await delivery.ack()

        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.subscribe(route, keep, group="other", qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.seen and received)
        assert inbox.seen == [(sent.message_id, 1)]
        assert received[0].body == sent.body
        assert received[0].message_type == sent.message_type

    async def test_publish_many_stores_all_in_order(self, transport: Transport, route: str) -> None:
        """publish_many stores every envelope and one consumer gets them in order."""
        sent = [envelope() for _ in range(30)]
        await transport.publish_many(route, sent, qos=QoS.AT_LEAST_ONCE)
        inbox = Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE, concurrency=1)
        await eventually(lambda: len(inbox.seen) >= len(sent))
        assert inbox.ids() == [e.message_id for e in sent]

    async def test_qos2_duplicate_message_id_is_stored_once(
        self, transport: Transport, route: str
    ) -> None:
        """A QoS 2 publish repeated with the same message_id is stored once."""
        duplicate, sentinel = envelope(qos=2), envelope(qos=2)
        for _ in range(3):
            await transport.publish(route, duplicate, qos=QoS.EXACTLY_ONCE)
        await transport.publish(route, sentinel, qos=QoS.EXACTLY_ONCE)
        inbox = Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE, concurrency=1)
        await eventually(lambda: sentinel.message_id in inbox.ids())
        assert inbox.ids() == [duplicate.message_id, sentinel.message_id]


class TestSettlement:
    async def test_ack_is_not_redelivered(self, transport: Transport, route: str) -> None:
        """An acked message is never delivered again."""
        sent, canary = envelope(), envelope()
        inbox = Inbox(leave_first_unsettled(canary.message_id))
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE, concurrency=1)
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.counts(sent.message_id) == [1])
        await after_one_ack_wait(transport, route, canary, inbox)
        assert inbox.counts(sent.message_id) == [1]

    async def test_nack_with_delay_redelivers_with_count_2(
        self, transport: Transport, route: str
    ) -> None:
        """nack(delay) brings the message back with delivery_count 2."""

        async def nack_once(delivery: Delivery) -> None:
            if delivery.delivery_count == 1:
                await delivery.nack(delay=0.05)
            else:
                await delivery.ack()

        inbox = Inbox(nack_once)
        sent = envelope()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(inbox.seen) >= 2)
        assert inbox.seen == [(sent.message_id, 1), (sent.message_id, 2)]

    async def test_unsettled_delivery_is_redelivered_after_ack_wait(
        self, transport: Transport, route: str
    ) -> None:
        """A delivery nobody settles within ack_wait (a lost ack) is redelivered."""
        sent = envelope()
        inbox = Inbox(leave_first_unsettled(sent.message_id))
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(inbox.seen) >= 2)
        assert inbox.seen == [(sent.message_id, 1), (sent.message_id, 2)]

    async def test_dead_letter_is_recorded_with_reason_and_not_redelivered(
        self, transport: Transport, route: str
    ) -> None:
        """dead_letter(reason) moves the message to the DLQ with that reason, for good."""
        sent, canary = envelope(body=b'{"bad": true}'), envelope()

        async def reject(delivery: Delivery) -> None:
            if delivery.envelope.message_id == sent.message_id:
                await delivery.dead_letter("payload rejected")
            else:
                await delivery.ack()

        inbox = Inbox(leave_first_unsettled(canary.message_id, reject))
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE, concurrency=1)
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.counts(sent.message_id) == [1])
        await after_one_ack_wait(transport, route, canary, inbox)
        assert inbox.counts(sent.message_id) == [1]
        [dead] = await transport.dead_letters(route)
        assert (dead.route, dead.reason, dead.delivery_count) == (route, "payload rejected", 1)
        assert (dead.envelope.message_id, dead.envelope.body) == (sent.message_id, sent.body)

    async def test_max_deliveries_exceeded_is_dead_lettered(
        self, backend: Backend, transport: Transport, route: str
    ) -> None:
        """A message nacked on every delivery is dead-lettered after max_deliveries."""

        async def nack(delivery: Delivery) -> None:
            await delivery.nack()

        inbox = Inbox(nack)
        sent = envelope()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)

        async def dead_lettered() -> bool:
            return bool(await transport.dead_letters(route))

        await eventually(dead_lettered)
        [dead] = await transport.dead_letters(route)
        assert dead.envelope.message_id == sent.message_id
        assert "max deliveries" in dead.reason
        assert dead.delivery_count == backend.max_deliveries
        assert inbox.counts(sent.message_id) == list(range(1, backend.max_deliveries + 1))


class TestConsumerGroups:
    async def test_competing_consumers_handle_each_message_once(
        self, backend: Backend, transport: Transport, route: str
    ) -> None:
        """Two consumers in one group (two processes) split 200 messages, each handled once."""
        inbox = Inbox()
        other = await backend.transport()
        await transport.subscribe(route, inbox, group="workers", qos=QoS.AT_LEAST_ONCE)
        await other.subscribe(route, inbox, group="workers", qos=QoS.AT_LEAST_ONCE)
        sent = [envelope() for _ in range(200)]
        await transport.publish_many(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(set(inbox.ids())) == len(sent))
        handled = Counter(inbox.ids())
        assert set(handled) == {e.message_id for e in sent}
        assert set(handled.values()) == {1}

    async def test_each_group_gets_every_message(
        self, backend: Backend, transport: Transport, route: str
    ) -> None:
        """Two groups each receive all messages of the route."""
        billing, audit = Inbox(), Inbox()
        await transport.subscribe(route, billing, group="billing", qos=QoS.AT_LEAST_ONCE)
        await (await backend.transport()).subscribe(
            route, audit, group="audit", qos=QoS.AT_LEAST_ONCE
        )
        sent = [envelope() for _ in range(50)]
        await transport.publish_many(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(billing.seen) >= 50 and len(audit.seen) >= 50)
        assert sorted(billing.ids()) == sorted(audit.ids()) == sorted(e.message_id for e in sent)


class TestFireAndForget:
    async def test_qos0_without_subscriber_is_dropped(
        self, transport: Transport, route: str
    ) -> None:
        """QoS 0 with nobody subscribed returns normally and the message is gone."""
        lost, later = envelope(qos=0), envelope(qos=0)
        await transport.publish(route, lost, qos=QoS.AT_MOST_ONCE)
        inbox, durable = Inbox(), Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_MOST_ONCE)
        await transport.subscribe(route, durable, group="d", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, later, qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: inbox.seen)
        assert inbox.ids() == [later.message_id]
        assert durable.seen == []

    async def test_qos0_with_subscriber_arrives(
        self, backend: Backend, transport: Transport, route: str
    ) -> None:
        """QoS 0 reaches a subscriber of another client; settling it is a harmless no-op."""

        async def settle_everything(delivery: Delivery) -> None:
            await delivery.in_progress()
            await delivery.nack(delay=0.01)
            await delivery.dead_letter("ignored at QoS 0")
            await delivery.ack()

        inbox = Inbox(settle_everything)
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_MOST_ONCE)
        sent = envelope(qos=0)
        await (await backend.transport()).publish(route, sent, qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: inbox.seen)
        assert inbox.seen == [(sent.message_id, 1)]
        assert await transport.dead_letters(route) == []


class TestRequestReply:
    async def test_round_trip(self, backend: Backend, transport: Transport, route: str) -> None:
        """A request reaches a responder in another client and its reply comes back."""
        responder = await backend.transport()

        async def answer(delivery: Delivery) -> None:
            request = delivery.envelope
            reply = Envelope(
                message_id=f"reply-{request.message_id}",
                message_type="test.Pong",
                body=request.body[::-1],
                correlation_id=request.message_id,
            )
            await responder.reply(request, reply)
            await delivery.ack()

        await responder.subscribe(route, answer, group="responders", qos=QoS.AT_LEAST_ONCE)
        sent = envelope(body=b"abc")
        reply = await transport.request(route, sent, timeout=5.0)
        assert (reply.correlation_id, reply.body) == (sent.message_id, b"cba")

    async def test_timeout_when_nobody_answers(self, transport: Transport, route: str) -> None:
        """A request nobody answers raises RequestTimeoutError carrying the message id."""
        sent = envelope()
        with pytest.raises(RequestTimeoutError) as info:
            await transport.request(route, sent, timeout=0.1)
        assert info.value.message_id == sent.message_id
        assert isinstance(info.value, TimeoutError)


class TestLifecycle:
    async def test_use_before_connect_raises(self, backend: Backend, route: str) -> None:
        """Every operation before connect() raises NotConnectedError that says what to do."""
        transport = await backend.transport(connect=False)
        with pytest.raises(NotConnectedError, match=r"connect\(\)"):
            await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
        with pytest.raises(NotConnectedError):
            await transport.subscribe(route, Inbox(), group="g", qos=QoS.AT_LEAST_ONCE)
        with pytest.raises(NotConnectedError):
            await transport.request(route, envelope(), timeout=0.1)
        with pytest.raises(NotConnectedError):
            await transport.dead_letters(route)

    async def test_aclose_is_idempotent_and_closes(self, transport: Transport, route: str) -> None:
        """aclose() twice is fine, and afterwards use raises NotConnectedError."""
        await transport.subscribe(route, Inbox(), group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.aclose()
        await transport.aclose()
        with pytest.raises(NotConnectedError):
            await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)

    async def test_async_with_connects_and_closes(self, backend: Backend, route: str) -> None:
        """``async with transport:`` connects on entry and closes on exit."""
        transport = await backend.transport(connect=False)
        # Every backend supports it, but typing.Transport does not declare __aenter__ yet.
        async with transport as entered:
            assert entered is transport
            await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
        with pytest.raises(NotConnectedError):
            await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)

    async def test_implements_the_protocols(self, transport: Transport, route: str) -> None:
        """The transport and its subscriptions satisfy the typing protocols."""
        assert isinstance(transport, Transport)
        sub = await transport.subscribe(route, Inbox(), group="g", qos=QoS.AT_LEAST_ONCE)
        assert isinstance(sub, Subscription)
        assert sub.route == route
        await sub.aclose()
        await sub.aclose()


class TestSubscription:
    async def test_aclose_waits_for_in_flight_and_returns_unsettled(
        self, backend: Backend, transport: Transport, route: str
    ) -> None:
        """Subscription.aclose waits for the running handler; its unsettled message comes back."""
        started, release = asyncio.Event(), asyncio.Event()
        finished: list[str] = []

        async def slow(delivery: Delivery) -> None:
            started.set()
            await release.wait()
            finished.append(delivery.envelope.message_id)

        sub = await transport.subscribe(route, slow, group="g", qos=QoS.AT_LEAST_ONCE)
        sent = envelope()
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await asyncio.wait_for(started.wait(), timeout=5.0)
        closing = asyncio.create_task(sub.aclose())
        # A correct transport cannot finish closing here; the wait only gives a wrong one
        # the chance to, so this never flakes.
        done, _ = await asyncio.wait({closing}, timeout=backend.short)
        assert not done
        release.set()
        await closing
        assert finished == [sent.message_id]
        inbox = Inbox()
        await (await backend.transport()).subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.seen)
        assert inbox.seen == [(sent.message_id, 2)]

    async def test_handler_raising_without_settling_is_redelivered(
        self, transport: Transport, route: str
    ) -> None:
        """A handler that raises without settling gets the message again; the consumer goes on."""

        async def fail_once(delivery: Delivery) -> None:
            if delivery.delivery_count == 1:
                raise RuntimeError("handler bug")
            await delivery.ack()

        inbox = Inbox(fail_once)
        first, second = envelope(), envelope()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish_many(route, [first, second], qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(inbox.seen) >= 4)
        assert inbox.counts(first.message_id) == [1, 2]
        assert inbox.counts(second.message_id) == [1, 2]
