"""RedisTransport beyond the shared contract: keys, dead letters, replies, QoS 0 groups."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from catga import QoS
from catga.exceptions import ConfigurationError, DeadLetterError, NotConnectedError
from catga.typing import Delivery, Envelope
from catga_redis import RedisConfig, RedisTransport, TransportState
from catga_redis._codec import encode
from catga_redis.exceptions import RedisConnectionError

from ..contract.conftest import envelope
from ..contract.test_transport import Inbox
from ..helpers import eventually
from ..servers import RedisServer, free_port

pytestmark = pytest.mark.redis

Make = Callable[..., Any]


async def nothing(delivery: Delivery) -> None:
    """Leave the delivery unsettled."""


class TestKeys:
    async def test_stream_and_dedup_keys(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """QoS 1 goes to {prefix}:{route}; QoS 2 also writes the dedup key with a ttl."""
        transport = await transports(dedup_window=60.0)
        sent = envelope(qos=2)
        await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, sent, qos=QoS.EXACTLY_ONCE)
        assert await client.xlen(f"{prefix}:{route}") == 2
        ttl = await client.pttl(f"{prefix}:dedup:{route}:{sent.message_id}")
        assert 0 < ttl <= 60_000

    async def test_publish_many_qos2_dedups_within_the_batch(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """A QoS 2 batch with a repeated id stores it once, in one script call."""
        transport = await transports()
        first, second = envelope(qos=2), envelope(qos=2)
        await transport.publish_many(route, [first, second, first], qos=QoS.EXACTLY_ONCE)
        await transport.publish_many(route, [], qos=QoS.EXACTLY_ONCE)
        assert await client.xlen(f"{prefix}:{route}") == 2


class TestDeadLetters:
    async def test_garbage_entry_is_dead_lettered_and_consumption_goes_on(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """An entry written by hand without an envelope goes to the DLQ with a reason."""
        transport = await transports()
        inbox = Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        garbage = await client.xadd(f"{prefix}:{route}", {"foo": "bar"})
        await client.xadd(f"{prefix}:{route}", {"m": b"\xc1 not msgpack"})
        after = envelope()
        await transport.publish(route, after, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.ids() == [after.message_id])

        async def two_dead() -> bool:
            return len(await transport.dead_letters(route)) == 2

        await eventually(two_dead)
        # Sorted by reason: the two are dead-lettered concurrently, in either order.
        first, second = sorted(await transport.dead_letters(route), key=lambda d: d.reason)
        assert first.reason.startswith("undecodable entry: entry has no 'm' field (fields: foo)")
        assert first.envelope.message_id == garbage.decode()
        assert first.envelope.body == b'{"foo":"bar"}'
        assert first.delivery_count == 1
        assert second.reason.startswith("undecodable entry: not a catga envelope")
        assert len(await transport.dead_letters(route, limit=1)) == 1

    async def test_replay_puts_it_back_once(self, transports: Make, route: str) -> None:
        """A replayed dead letter is consumed again and leaves the DLQ; a second replay fails."""
        transport = await transports()

        async def reject_first(delivery: Delivery) -> None:
            if len(inbox.seen) == 1:
                await delivery.dead_letter("first time")
            else:
                await delivery.ack()

        inbox = Inbox(reject_first)
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        sent = envelope()
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)

        async def dead() -> bool:
            return bool(await transport.dead_letters(route))

        await eventually(dead)
        [letter] = await transport.dead_letters(route)
        await transport.replay_dead_letter(route, letter.id)
        await eventually(lambda: inbox.ids() == [sent.message_id] * 2)
        assert await transport.dead_letters(route) == []
        with pytest.raises(DeadLetterError):
            await transport.replay_dead_letter(route, letter.id)

    async def test_replay_of_notes_only_is_refused(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """A dead letter holding no original fields cannot be replayed."""
        transport = await transports()
        entry = await client.xadd(f"{prefix}:{route}:dlq", {"catga-reason": "x"})
        with pytest.raises(DeadLetterError):
            await transport.replay_dead_letter(route, entry.decode())

    async def test_dlq_is_bounded(self, transports: Make, route: str) -> None:
        """The dead-letter stream keeps the newest dlq_max entries."""
        transport = await transports(dlq_max=2)

        async def reject(delivery: Delivery) -> None:
            await delivery.dead_letter("no")
            await delivery.dead_letter("settled twice: ignored")

        inbox = Inbox(reject)
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        sent = [envelope() for _ in range(3)]
        await transport.publish_many(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(inbox.seen) == 3)

        async def trimmed() -> bool:
            dead = await transport.dead_letters(route)
            return [d.envelope.message_id for d in dead] == [e.message_id for e in sent[1:]]

        await eventually(trimmed)


class TestSettlement:
    async def test_stale_delivery_cannot_nack_or_dead_letter(
        self, transports: Make, route: str
    ) -> None:
        """After another consumer took the entry over, the first one's settles do nothing."""
        first, second = await transports(), await transports()
        stale: list[Delivery] = []

        async def keep(delivery: Delivery) -> None:
            stale.append(delivery)

        sub = await first.subscribe(route, keep, group="g", qos=QoS.AT_LEAST_ONCE)
        sent = envelope()
        await first.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: stale)
        await sub.aclose()  # so that only `second` takes it over
        taken: list[Delivery] = []

        async def take(delivery: Delivery) -> None:
            taken.append(delivery)

        await second.subscribe(route, take, group="g", qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: taken, what="taken over after claim_idle")
        await stale[0].in_progress()
        await stale[0].nack()
        await stale[0].dead_letter("stale")
        assert await first.dead_letters(route) == []
        assert taken[0].delivery_count == 2
        await taken[0].ack()

    async def test_in_progress_keeps_the_delivery(self, transports: Make, route: str) -> None:
        """A delivery touched with in_progress() more often than claim_idle is not taken over."""
        transport = await transports(claim_idle=0.2)
        held: list[Delivery] = []

        async def hold(delivery: Delivery) -> None:
            held.append(delivery)

        await transport.subscribe(route, hold, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: held)
        # Not waiting for work: outliving several claim_idle periods is the test.
        for _ in range(8):
            await asyncio.sleep(0.05)
            await held[0].in_progress()
        assert [d.delivery_count for d in held] == [1]
        await held[0].ack()
        await held[0].in_progress()  # settled: a no-op

    async def test_long_nack_delay_is_shortened_with_a_warning(
        self, transports: Make, route: str
    ) -> None:
        """nack(delay) beyond claim_idle comes back after claim_idle, and says so once."""
        transport = await transports(claim_idle=0.1)

        async def nack_long(delivery: Delivery) -> None:
            if delivery.delivery_count == 1:
                await delivery.nack(delay=3600.0)
            else:
                await delivery.ack()

        inbox = Inbox(nack_long)
        with capture_logs() as logs:
            await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
            sent = envelope()
            await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
            await eventually(lambda: len(inbox.seen) == 2)
        assert inbox.counts(sent.message_id) == [1, 2]
        assert any("shortened" in log["event"] for log in logs)

    async def test_handler_error_after_nack_is_logged(self, transports: Make, route: str) -> None:
        """A handler that raises after settling is logged; the settle stands."""

        async def settle_then_raise(delivery: Delivery) -> None:
            await delivery.ack()
            raise RuntimeError("after ack")

        transport = await transports()
        inbox = Inbox(settle_then_raise)
        with capture_logs() as logs:
            await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
            await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)
            await eventually(lambda: inbox.seen)
            await eventually(lambda: any("raised" in log["event"] for log in logs))


class TestRequestReply:
    async def test_concurrent_requests_with_one_id_all_get_the_reply(
        self, transports: Make, route: str
    ) -> None:
        """Several waiting requests with the same message_id are all answered by one reply."""
        caller, responder = await transports(), await transports()
        gate = asyncio.Event()
        calls: list[str] = []
        replied: list[bool] = []

        async def answer_once(delivery: Delivery) -> None:
            calls.append(delivery.envelope.message_id)
            await gate.wait()
            if not replied:
                replied.append(True)
                reply = Envelope(message_id="r", message_type="Pong", body=b"only")
                await responder.reply(delivery.envelope, reply)
            await delivery.ack()

        await responder.subscribe(route, answer_once, group="g", qos=QoS.AT_LEAST_ONCE)
        sent = envelope()
        waiting = [
            asyncio.ensure_future(caller.request(route, sent, timeout=5.0)) for _ in range(3)
        ]
        await eventually(lambda: len(calls) == 3)
        gate.set()
        replies = await asyncio.gather(*waiting)
        assert [r.body for r in replies] == [b"only"] * 3

    async def test_reply_without_reply_to_and_stray_messages(
        self, transports: Make, client: Redis
    ) -> None:
        """A request with no reply_to is not answered; garbage on the reply channel is dropped."""
        transport = await transports()
        await transport.reply(envelope(), envelope())
        with capture_logs() as logs:
            await client.publish(transport._reply_channel, b"garbage")
            await eventually(lambda: any("reply dropped" in log["event"] for log in logs))

    async def test_aclose_fails_waiting_requests(self, transports: Make, route: str) -> None:
        """Closing the transport ends a waiting request with NotConnectedError."""
        transport = await transports()
        waiting = asyncio.ensure_future(transport.request(route, envelope(), timeout=5.0))
        await eventually(lambda: transport._waiting)
        await transport.aclose()
        with pytest.raises(NotConnectedError):
            await waiting


class TestFireAndForget:
    async def test_one_consumer_per_group_and_every_group(
        self, transports: Make, route: str
    ) -> None:
        """QoS 0: two subscribers of one group split the messages; another group gets all."""
        a, b, c = await transports(), await transports(), await transports()
        workers, audit = Inbox(), Inbox()
        await a.subscribe(route, workers, group="workers", qos=QoS.AT_MOST_ONCE)
        await b.subscribe(route, workers, group="workers", qos=QoS.AT_MOST_ONCE)
        await c.subscribe(route, audit, group="audit", qos=QoS.AT_MOST_ONCE)
        sent = [envelope(qos=0) for _ in range(40)]
        await a.publish_many(route, sent, qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: len(workers.seen) >= 40 and len(audit.seen) >= 40)
        assert set(Counter(workers.ids()).values()) == {1}
        assert sorted(workers.ids()) == sorted(audit.ids()) == sorted(e.message_id for e in sent)

    async def test_two_groups_in_one_transport_and_unsubscribe(
        self, transports: Make, route: str
    ) -> None:
        """Two QoS 0 subscriptions of one transport share a channel; closing one keeps the other."""
        transport = await transports()
        first, second = Inbox(), Inbox()
        sub = await transport.subscribe(route, first, group="a", qos=QoS.AT_MOST_ONCE)
        await transport.subscribe(route, second, group="b", qos=QoS.AT_MOST_ONCE)
        await sub.aclose()
        sent = envelope(qos=0)
        await transport.publish(route, sent, qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: second.seen)
        assert first.seen == []

    async def test_concurrent_subscribes_are_both_confirmed(
        self, transports: Make, route: str
    ) -> None:
        """Two QoS 0 subscriptions started at once both receive what is published next."""
        transport = await transports()
        first, second = Inbox(), Inbox()
        await asyncio.gather(
            transport.subscribe(route, first, group="a", qos=QoS.AT_MOST_ONCE),
            transport.subscribe(route, second, group="b", qos=QoS.AT_MOST_ONCE),
        )
        sent = envelope(qos=0)
        await transport.publish(route, sent, qos=QoS.AT_MOST_ONCE)
        await eventually(lambda: first.seen and second.seen)

    async def test_undecodable_message_is_dropped(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """Garbage on a QoS 0 channel is logged and dropped; later messages arrive."""
        transport = await transports()
        inbox = Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_MOST_ONCE)
        with capture_logs() as logs:
            await client.publish(f"{prefix}:{route}:q0", b"garbage")
            sent = envelope(qos=0)
            await transport.publish(route, sent, qos=QoS.AT_MOST_ONCE)
            await eventually(lambda: inbox.seen)
        assert inbox.ids() == [sent.message_id]
        assert any("undecodable" in log["event"] for log in logs)


class TestLifecycle:
    async def test_states(self, make_config: Callable[..., RedisConfig]) -> None:
        """NEW, then OPEN after connect (twice is fine), CLOSED after aclose; reconnect works."""
        transport = RedisTransport(make_config())
        assert transport.state is TransportState.NEW
        await transport.aclose()
        assert transport.state is TransportState.CLOSED
        async with transport:
            await transport.connect()
            assert transport.state is TransportState.OPEN
        assert transport.state is TransportState.CLOSED

    async def test_unreachable_server(self, prefix: str) -> None:
        """connect() to a closed port raises RedisConnectionError (also a ConnectionError)."""
        config = RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
        transport = RedisTransport(config)
        with pytest.raises(RedisConnectionError, match="URL"):
            await transport.connect()
        assert transport.state is TransportState.NEW

    async def test_subscribe_validation(self, transports: Make, route: str) -> None:
        """concurrency < 1 is refused."""
        transport = await transports()
        with pytest.raises(ValueError, match="concurrency"):
            await transport.subscribe(
                route, Inbox(), group="g", qos=QoS.AT_LEAST_ONCE, concurrency=0
            )

    async def test_aclose_leaves_no_consumer_behind(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """A subscription closed with nothing pending removes its consumer from the group."""
        transport = await transports()
        sub = await transport.subscribe(route, Inbox(), group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish(route, envelope(), qos=QoS.AT_LEAST_ONCE)

        async def acked() -> bool:
            return (await client.xpending(f"{prefix}:{route}", "g"))["pending"] == 0

        await eventually(acked)
        await sub.aclose()
        assert await client.xinfo_consumers(f"{prefix}:{route}", "g") == []

    async def test_aclose_while_redis_is_down(
        self, own_redis_server: RedisServer, prefix: str, route: str
    ) -> None:
        """Closing a transport whose Redis died ends its reader loop without waiting it out."""
        config = RedisConfig(
            url=own_redis_server.url, prefix=prefix, block=0.05, reconnect_max=30.0
        )
        transport = RedisTransport(config)
        await transport.connect()
        await transport.subscribe(route, Inbox(), group="g", qos=QoS.AT_LEAST_ONCE)
        with capture_logs() as logs:
            own_redis_server.kill()
            await eventually(lambda: any("failed" in log["event"] for log in logs))
        await asyncio.wait_for(transport.aclose(), timeout=20.0)
        assert transport.state is TransportState.CLOSED

    async def test_lost_group_is_recreated(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """If the stream vanishes under a consumer (data lost), the group is recreated."""
        transport = await transports()
        inbox = Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        with capture_logs() as logs:
            await client.delete(f"{prefix}:{route}")
            await eventually(lambda: any("recreating" in log["event"] for log in logs))
        sent = envelope()
        await transport.publish(route, sent, qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.seen)

    async def test_retention_trims_acked_entries(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """With a short retention, acked entries are trimmed by the consumer."""
        transport = await transports(retention=0.001, trim_interval=0.01)
        inbox = Inbox()
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await transport.publish_many(route, [envelope() for _ in range(5)], qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: len(inbox.seen) == 5)

        async def trimmed() -> bool:
            return await client.xlen(f"{prefix}:{route}") <= 1

        await eventually(trimmed)


class TestServerChecks:
    async def test_eviction_policy_is_refused_or_warned(
        self, own_redis_server: RedisServer, prefix: str
    ) -> None:
        """maxmemory-policy other than noeviction fails connect(), or only warns if allowed."""
        raw = Redis.from_url(own_redis_server.url)
        await raw.config_set("maxmemory-policy", "allkeys-lru")
        await raw.aclose()
        strict = RedisTransport(RedisConfig(url=own_redis_server.url, prefix=prefix))
        with pytest.raises(ConfigurationError, match="noeviction"):
            await strict.connect()
        lenient = RedisTransport(
            RedisConfig(url=own_redis_server.url, prefix=prefix, require_noeviction=False)
        )
        with capture_logs() as logs:
            async with lenient:
                pass
        assert any("noeviction" in log["event"] for log in logs)

    async def test_publish_raw_envelope_round_trip(
        self, transports: Make, client: Redis, prefix: str, route: str
    ) -> None:
        """An entry written by another producer in the documented format is consumed."""
        transport = await transports()
        inbox = Inbox()
        sent = envelope()
        await client.xadd(f"{prefix}:{route}", {"m": encode(sent)})
        await transport.subscribe(route, inbox, group="g", qos=QoS.AT_LEAST_ONCE)
        await eventually(lambda: inbox.seen)
        assert inbox.ids() == [sent.message_id]
