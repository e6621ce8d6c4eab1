"""NatsTransport beyond the contract: dead letters, garbage, requests, lifecycle."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from catga import QoS
from catga.exceptions import NotConnectedError, RequestTimeoutError, TransportError
from catga.typing import Delivery, Envelope
from catga_nats import NatsConfig, NatsTransport
from catga_nats.exceptions import NatsConnectionError

from ..helpers import eventually

pytestmark = pytest.mark.nats


def envelope(qos: int = 1, body: bytes = b"{}") -> Envelope:
    return Envelope(
        message_id=f"m-{uuid.uuid4().hex}", message_type="test.Ping", body=body, qos=qos
    )


class Recorder:
    def __init__(self, act: str = "ack") -> None:
        self.seen: list[Delivery] = []
        self.act = act

    async def __call__(self, delivery: Delivery) -> None:
        self.seen.append(delivery)
        if self.act == "ack":
            await delivery.ack()
        elif self.act == "progress":
            await delivery.in_progress()
            await delivery.ack()


class TestDeadLetters:
    async def test_garbage_is_dead_lettered_and_consumption_goes_on(
        self, transport: NatsTransport, config: NatsConfig, route: str
    ) -> None:
        """Bytes that are no envelope go to the DLQ with the reason; the next message is handled."""
        inbox = Recorder()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        js = transport.client.jetstream()
        await js.publish(config.durable_subject(route), b"\x00garbage\xff")
        good = envelope()
        await transport.publish(route, good, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: [d.envelope.message_id for d in inbox.seen] == [good.message_id])

        async def dead() -> bool:
            return len(await transport.dead_letters(route)) == 1

        await eventually(dead)
        [letter] = await transport.dead_letters(route)
        assert letter.reason.startswith("undecodable")
        assert letter.envelope.body == b"\x00garbage\xff"
        assert letter.delivery_count == 1

    async def test_dead_letters_limit_and_order(self, transport: NatsTransport, route: str) -> None:
        """dead_letters returns the oldest first, at most limit, only of its route."""

        async def reject(delivery: Delivery) -> None:
            await delivery.dead_letter(f"no\n{delivery.envelope.message_id}")

        sent = [envelope() for _ in range(3)]
        await transport.subscribe(route, reject, group="g", qos=QoS.AT_LEAST_ONCE, concurrency=1)
        await transport.publish_many(route, sent, qos=QoS.AT_LEAST_ONCE)

        async def all_dead() -> bool:
            return len(await transport.dead_letters(route)) == 3

        await eventually(all_dead)
        letters = await transport.dead_letters(route, limit=2)
        assert [d.envelope.message_id for d in letters] == [e.message_id for e in sent[:2]]
        assert letters[0].reason == f"no {sent[0].message_id}"  # one line in a header
        assert await transport.dead_letters(f"{route}.other") == []


class TestSettlement:
    async def test_in_progress_then_ack(self, transport: NatsTransport, route: str) -> None:
        """in_progress() is accepted and a settled delivery ignores further settling."""
        inbox = Recorder("progress")
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.seen)
        delivery = inbox.seen[0]
        await delivery.ack()
        await delivery.nack()
        await delivery.in_progress()
        await delivery.dead_letter("late")
        assert await transport.dead_letters("r") == []

    async def test_qos0_publish_many_and_garbage(
        self, transport: NatsTransport, config: NatsConfig, route: str
    ) -> None:
        """QoS 0 batches arrive; QoS 0 garbage is dropped and the subscriber goes on."""
        inbox = Recorder()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_MOST_ONCE)
        await transport.client.publish(config.fire_subject(route), b"junk")
        sent = [envelope(qos=0) for _ in range(5)]
        await transport.publish_many(route, sent, qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: len(inbox.seen) == 5)

    async def test_qos0_queue_group_delivers_once(self, config: NatsConfig, route: str) -> None:
        """Two QoS 0 subscribers in one group: each message reaches one of them."""
        inbox = Recorder()
        async with NatsTransport(config) as a, NatsTransport(config) as b:
            await a.subscribe(route, inbox, group="g", qos=QoS.AT_MOST_ONCE)
            await b.subscribe(route, inbox, group="g", qos=QoS.AT_MOST_ONCE)
            await a.client.flush()
            await b.client.flush()
            sent = [envelope(qos=0) for _ in range(40)]
            await a.publish_many(route, sent, qos=QoS.AT_MOST_ONCE)
            await eventually(lambda: len(inbox.seen) >= 40)
            ids = [d.envelope.message_id for d in inbox.seen]
            assert sorted(ids) == sorted(e.message_id for e in sent)


class TestRequests:
    async def test_concurrent_requests_with_one_id_share_the_reply(
        self, transport: NatsTransport, config: NatsConfig, route: str
    ) -> None:
        """Three callers with the same message id: one request is published, all get the reply."""
        handled: list[str] = []
        async with NatsTransport(config) as responder:

            async def answer(delivery: Delivery) -> None:
                handled.append(delivery.envelope.message_id)
                reply = Envelope(message_id="r", message_type="t", body=b"ok")
                await responder.reply(delivery.envelope, reply)
                await delivery.ack()

            await responder.subscribe(route, answer, group="g", qos=QoS.AT_LEAST_ONCE)
            sent = envelope()
            replies = await asyncio.gather(
                *(transport.request(route, sent, timeout=5.0) for _ in range(3))
            )
            assert [r.body for r in replies] == [b"ok"] * 3
            assert handled == [sent.message_id]

    async def test_reply_without_reply_to_and_late_reply_are_dropped(
        self, transport: NatsTransport
    ) -> None:
        """reply() to a request without a reply address, or to a gone inbox, does nothing."""
        await transport.reply(envelope(), envelope())
        late = Envelope(message_id="x", message_type="t", body=b"", reply_to="_INBOX.gone.1")
        await transport.reply(late, envelope())

    async def test_timeout(self, transport: NatsTransport, route: str) -> None:
        """No responder: RequestTimeoutError."""
        with pytest.raises(RequestTimeoutError):
            await transport.request(route, envelope(), timeout=0.2)

    async def test_close_fails_waiting_requests(self, config: NatsConfig, route: str) -> None:
        """A request still waiting when the transport closes gets NotConnectedError."""
        transport = NatsTransport(config)
        await transport.connect()
        waiting = asyncio.create_task(transport.request(route, envelope(), timeout=10.0))
        await eventually(lambda: transport._requests)
        await transport.aclose()
        with pytest.raises(NotConnectedError):
            await waiting


class TestLifecycle:
    async def test_unreachable_server_is_a_connection_error(self) -> None:
        """connect() to a port where nothing listens raises NatsConnectionError."""
        from ..servers import free_port

        config = NatsConfig(servers=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
        with pytest.raises(NatsConnectionError):
            await NatsTransport(config).connect()

    async def test_connect_is_idempotent_and_reopens(self, config: NatsConfig) -> None:
        """connect twice is fine; after aclose, connect opens again."""
        transport = NatsTransport(config)
        await transport.connect()
        await transport.connect()
        await transport.aclose()
        with pytest.raises(NotConnectedError):
            _ = transport.client
        await transport.connect()
        await transport.publish("x", envelope(), qos=QoS.AT_LEAST_ONCE)
        await transport.aclose()

    async def test_subscribe_validates_concurrency(
        self, transport: NatsTransport, route: str
    ) -> None:
        """concurrency < 1 is refused."""
        with pytest.raises(ValueError, match="concurrency"):
            await transport.subscribe(
                route, Recorder(), group="g", qos=QoS.AT_LEAST_ONCE, concurrency=0
            )

    async def test_publish_when_connection_closed_underneath(self, config: NatsConfig) -> None:
        """A publish on a connection closed behind the transport's back is a TransportError."""
        transport = NatsTransport(config)
        await transport.connect()
        await transport.client.close()
        with pytest.raises(NatsConnectionError):
            await transport.publish("x", envelope(), qos=QoS.AT_LEAST_ONCE)
        await transport.aclose()


class TestPullRecovery:
    async def test_deleted_consumer_is_recreated(
        self, transport: NatsTransport, config: NatsConfig, route: str
    ) -> None:
        """If the durable consumer disappears, the pull loop re-creates it and goes on."""
        from catga_nats._setup import durable_name

        inbox = Recorder()
        sub = await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        nc = await nats.connect(config.servers[0])
        try:
            await nc.jetstream().delete_consumer(config.stream_name, durable_name(route, "g"))
        finally:
            await nc.close()
        await eventually(lambda: sub.rebinds >= 1)  # type: ignore[attr-defined]
        sent = envelope()
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: [d.envelope.message_id for d in inbox.seen] == [sent.message_id])


class TestDeadLetterFailure:
    async def test_failed_dead_letter_leaves_the_delivery_unsettled(
        self, transport: NatsTransport, config: NatsConfig, route: str
    ) -> None:
        """If the DLQ write fails, the error is raised and the delivery can still be nacked."""
        errors: list[Exception] = []
        seen: list[int] = []

        async def reject(delivery: Delivery) -> None:
            seen.append(delivery.delivery_count)
            if delivery.delivery_count > 1:
                await delivery.ack()
                return
            try:
                await delivery.dead_letter("bad")
            except Exception as exc:
                errors.append(exc)
                await delivery.nack()

        js = transport.client.jetstream()
        await js.delete_stream(config.dlq_stream_name)
        await transport.subscribe(route, reject, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: seen == [1, 2])
        assert len(errors) == 1
        assert isinstance(errors[0], TransportError)


class TestConcurrency:
    @pytest.mark.parametrize("qos", [QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE])
    async def test_at_most_concurrency_handlers_and_no_head_of_line_blocking(
        self, transport: NatsTransport, route: str, qos: QoS
    ) -> None:
        """With concurrency 3, three handlers run at once (the first waits for the third)."""
        running, peak, handled = [0], [0], []
        third = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] == 3:
                third.set()
            await third.wait()
            running[0] -= 1
            handled.append(delivery.envelope.message_id)
            await delivery.ack()

        await transport.subscribe(route, handler, group="g", qos=qos, concurrency=3)
        await transport.client.flush()
        sent = [envelope(qos=int(qos)) for _ in range(9)]
        await transport.publish_many(route, sent, qos=qos)
        await eventually(lambda: len(handled) == 9)
        assert peak[0] == 3
