"""Faults: a consumer process killed mid-handler, Redis killed and restarted, garbage, races."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from catga import (
    CatgaOptions,
    HandlerRegistry,
    IdempotencyOptions,
    JsonSerializer,
    Mediator,
    Message,
    QoS,
    Worker,
    message_name,
)
from catga.exceptions import TransportError
from catga.typing import Delivery, Envelope
from catga_redis import RedisIdempotencyStore, RedisTransport

from ..contract.conftest import envelope
from ..helpers import eventually
from ..server_fixtures import AnyRedis
from ..servers import RedisServer
from ..unit.test_worker import FAST_RETRY
from .conftest import short_config
from .consumer_proc import config
from .fault_app import ROUTES, Credit, Job, Pay, Settle, registry

pytestmark = [pytest.mark.faults, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


class Processes:
    """Consumer processes started by a test; every one is killed at the end."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, hang: bool = False) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "tests.redis.consumer_proc", self.url, self.prefix]
        proc = subprocess.Popen([*args, *(["--hang"] if hang else [])], cwd=ROOT)
        self.procs.append(proc)
        return proc

    async def ready(self, effects: Redis, proc: subprocess.Popen[bytes]) -> None:
        async def up() -> bool:
            assert proc.poll() is None, f"consumer exited with {proc.returncode}"
            return bool(await effects.exists(f"{self.prefix}:ready:{proc.pid}"))

        await eventually(up, timeout=20.0, what="consumer process subscribed")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def processes(redis_server: AnyRedis, prefix: str) -> Iterator[Processes]:
    procs = Processes(redis_server.url, prefix)
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture
async def effects(redis_server: AnyRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def sender(redis_server: AnyRedis, prefix: str) -> AsyncIterator[Mediator]:
    """The test's own process, sending over Redis (no handlers)."""
    async with RedisTransport(config(redis_server.url, prefix)) as transport:
        types = HandlerRegistry()
        types.add_types(Job, Pay, Settle, Credit)
        options = CatgaOptions(routes=ROUTES, request_timeout=30.0)
        async with Mediator(types, options=options, transport=transport) as mediator:
            yield mediator


async def count(effects: Redis, prefix: str, message_id: str) -> int:
    return int(await effects.get(f"{prefix}:effects:{message_id}") or 0)


async def started_by(effects: Redis, prefix: str, message_id: str) -> int:
    """Wait until a hanging handler announced it started; return its pid."""
    key = f"{prefix}:started:{message_id}"
    await eventually(lambda: effects.exists(key), timeout=20.0, what="handler started")
    return int(await effects.get(key) or 0)


class TestConsumerKilled:
    async def test_qos1_entry_is_taken_over(
        self, processes: Processes, effects: Redis, sender: Mediator, prefix: str
    ) -> None:
        """SIGKILL mid-handler: another consumer gets the entry (at least once: twice here)."""
        doomed = processes.start(hang=True)
        await processes.ready(effects, doomed)
        job = Job(n=1)
        await sender.publish(job)
        assert await started_by(effects, prefix, job.message_id) == doomed.pid
        doomed.send_signal(signal.SIGKILL)
        survivor = processes.start()
        await processes.ready(effects, survivor)

        async def handled_again() -> bool:
            return await count(effects, prefix, job.message_id) == 2

        await eventually(handled_again, timeout=20.0)

    async def test_qos2_effect_is_committed_once(
        self, processes: Processes, effects: Redis, sender: Mediator, prefix: str
    ) -> None:
        """SIGKILL mid-handler at QoS 2: the survivor commits once; a duplicate gets its result."""
        doomed = processes.start(hang=True)
        await processes.ready(effects, doomed)
        pay = Pay(amount=7)
        reply = asyncio.ensure_future(sender.send(pay))
        assert await started_by(effects, prefix, pay.message_id) == doomed.pid
        doomed.send_signal(signal.SIGKILL)
        survivor = processes.start()
        await processes.ready(effects, survivor)
        assert await reply == f"paid 7 by {survivor.pid}"
        assert await sender.send(pay) == f"paid 7 by {survivor.pid}"
        assert await count(effects, prefix, pay.message_id) == 1


class TestRedisRestart:
    async def test_every_confirmed_qos1_message_is_handled(
        self, own_redis_server: RedisServer, prefix: str
    ) -> None:
        """Redis kill -9 (AOF everysec) and restart amid 1,000 publishes: none confirmed is lost."""
        cfg = short_config(own_redis_server.url, prefix, claim_idle=0.5, reconnect_max=0.2)
        handled: set[str] = set()
        failures: list[int] = []

        async def record(delivery: Delivery) -> None:
            handled.add(delivery.envelope.message_id)
            await delivery.ack()

        async with RedisTransport(cfg) as consumer, RedisTransport(cfg) as producer:
            await consumer.subscribe("load", record, group="g", qos=QoS.AT_LEAST_ONCE)
            confirmed: list[str] = []
            restarted: asyncio.Future[None] | None = None
            for i in range(1000):
                if i == 300:  # mid-run: killed now, started again while publishes retry
                    own_redis_server.kill()
                    restarted = asyncio.ensure_future(asyncio.to_thread(own_redis_server.start))
                sent = envelope(f"load-{i}")
                failures.append(await publish_until_stored(producer, sent))
                confirmed.append(sent.message_id)
            assert restarted is not None
            await restarted
            await eventually(lambda: handled >= set(confirmed), timeout=30.0, what="all handled")
        assert sum(failures) > 0, "the restart happened while publishing"

    async def test_replies_and_qos0_work_again_after_a_restart(
        self, own_redis_server: RedisServer, prefix: str
    ) -> None:
        """After kill -9 and restart the pub/sub connection is back: requests and QoS 0 flow."""
        cfg = short_config(own_redis_server.url, prefix, reconnect_max=0.2)
        async with RedisTransport(cfg) as caller, RedisTransport(cfg) as responder:

            async def answer(delivery: Delivery) -> None:
                await responder.reply(delivery.envelope, delivery.envelope)
                await delivery.ack()

            fanout: list[str] = []

            async def keep(delivery: Delivery) -> None:
                fanout.append(delivery.envelope.message_id)

            await responder.subscribe("ask", answer, group="g", qos=QoS.AT_LEAST_ONCE)
            await responder.subscribe("tell", keep, group="g", qos=QoS.AT_MOST_ONCE)
            own_redis_server.restart()

            async def answered() -> bool:
                try:
                    await caller.request("ask", envelope(), timeout=0.5)
                except (TransportError, TimeoutError):
                    return False
                return True

            await eventually(answered, timeout=30.0, what="a request answered after restart")

            async def told() -> bool:
                await caller.publish("tell", envelope(qos=0), qos=QoS.AT_MOST_ONCE)
                return bool(fanout)

            await eventually(told, timeout=30.0, what="QoS 0 delivered after restart")


async def publish_until_stored(producer: RedisTransport, sent: Envelope) -> int:
    """Publish, retrying the same envelope while Redis is away (bounded); return the failures."""
    for failed in range(400):
        try:
            await producer.publish("load", sent, qos=QoS.AT_LEAST_ONCE)
            return failed
        except TransportError:
            await asyncio.sleep(0.025)
    pytest.fail(f"{sent.message_id} could not be published")


class TestGarbage:
    async def test_garbage_is_dead_lettered_and_the_worker_goes_on(
        self,
        make_config: Callable[..., Any],
        effects: Redis,
        sender: Mediator,
        redis_server: AnyRedis,
        prefix: str,
    ) -> None:
        """Entries written straight to the stream are dead-lettered with a reason; work goes on."""
        async with RedisTransport(config(redis_server.url, prefix)) as transport:
            mediator = Mediator(
                registry(effects, prefix), options=CatgaOptions(routes=ROUTES), transport=transport
            )
            async with Worker(mediator, keepalive=0.1):
                await effects.xadd(f"{prefix}:jobs", {"foo": "bar"})
                await effects.xadd(f"{prefix}:jobs", {"m": b"\x93garbage"})
                job = Job(n=2)
                await sender.publish(job)

                async def handled() -> bool:
                    return await count(effects, prefix, job.message_id) == 1

                await eventually(handled)

                async def two_dead() -> bool:
                    return len(await transport.dead_letters("jobs")) == 2

                await eventually(two_dead)
            # Sorted: the two are dead-lettered concurrently, in either order.
            reasons = sorted(d.reason for d in await transport.dead_letters("jobs"))
            assert reasons[0].startswith("undecodable entry: entry has no 'm' field")
            assert reasons[1].startswith("undecodable entry: not a catga envelope")


async def consumers(
    url: str, prefix: str, effects: Redis, n: int, route: str, *, concurrency: int = 16
) -> tuple[list[Worker], list[Callable[[], Awaitable[None]]]]:
    """Start ``n`` workers on ``route``, each with its own transport and store (like processes)."""
    workers: list[Worker] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    for _ in range(n):
        transport = RedisTransport(config(url, prefix))
        await transport.connect()
        store = RedisIdempotencyStore(config(url, prefix))
        options = CatgaOptions(
            routes=ROUTES, idempotency=IdempotencyOptions(lease=5.0), retry=FAST_RETRY
        )
        mediator = Mediator(
            registry(effects, prefix), options=options, transport=transport, store=store
        )
        closers += [store.aclose, transport.aclose, mediator.aclose]
        worker = Worker(
            mediator, keepalive=0.1, busy_delay=0.05, routes=[route], concurrency=concurrency
        )
        await worker.start()
        workers.append(worker)
        closers.append(worker.stop)
    return workers, closers


def copy_of(message: Message, qos: int = 2) -> Envelope:
    """The envelope a sender would make, to publish copies with one message_id."""
    return Envelope(
        message_id=message.message_id,
        message_type=message_name(type(message)),
        body=JsonSerializer().encode(message),
        qos=qos,
    )


class TestConcurrentDuplicates:
    async def test_twelve_deliveries_of_one_id_on_three_consumers_commit_once(
        self, redis_server: AnyRedis, effects: Redis, prefix: str
    ) -> None:
        """12 copies of one QoS 2 command, delivered at once to 3 consumers: one effect."""
        workers, closers = await consumers(redis_server.url, prefix, effects, 3, "settles")
        try:
            settle = Settle(amount=1)
            producer = RedisTransport(config(redis_server.url, prefix))
            closers.append(producer.aclose)
            await producer.connect()
            # QoS 1 publish of a QoS 2 envelope: no producer dedup, so all 12 are stored.
            await producer.publish_many("settles", [copy_of(settle)] * 12, qos=QoS.AT_LEAST_ONCE)

            async def all_settled() -> bool:
                pending = await effects.xpending(f"{prefix}:settles", "catga")
                handled = sum(w.health().handled for w in workers)
                return pending["pending"] == 0 and handled == 12

            await eventually(all_settled, timeout=20.0)
            assert await count(effects, prefix, settle.message_id) == 1
            assert sum(w.health().deferred for w in workers) >= 1
            assert sum(w.health().dead_lettered for w in workers) == 0
        finally:
            for close in reversed(closers):
                await close()

    async def test_busy_event_duplicate_on_another_consumer_is_deferred(
        self, redis_server: AnyRedis, effects: Redis, prefix: str
    ) -> None:
        """A QoS 2 event copy reaching a second consumer while the first runs is deferred."""
        workers, closers = await consumers(
            redis_server.url, prefix, effects, 2, "credits", concurrency=1
        )
        try:
            credit = Credit(amount=1)
            producer = RedisTransport(config(redis_server.url, prefix))
            closers.append(producer.aclose)
            await producer.connect()
            await producer.publish_many("credits", [copy_of(credit)] * 2, qos=QoS.AT_LEAST_ONCE)

            async def all_settled() -> bool:
                return sum(w.health().handled + w.health().dead_lettered for w in workers) == 2

            await eventually(all_settled, timeout=20.0)
            assert await count(effects, prefix, credit.message_id) == 1
            assert sum(w.health().dead_lettered for w in workers) == 0
        finally:
            for close in reversed(closers):
                await close()
