"""Faults: killed consumer processes, a killed server, publisher retries, garbage, races."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from catga import CatgaOptions, Event, HandlerRegistry, Mediator, QoS, RetryPolicy, Worker, handles
from catga.exceptions import TransportError
from catga.typing import Delivery, Envelope
from catga_nats import NatsConfig, NatsIdempotencyStore, NatsTransport

from ..helpers import eventually
from ..servers import NatsServer
from .conftest import unique_config
from .worker_proc import ROUTES, Work, WorkOnce

pytestmark = [pytest.mark.faults, pytest.mark.nats]

SCRIPT = Path(__file__).with_name("worker_proc.py")


class Proc:
    """A worker_proc.py process whose stdout lines can be awaited."""

    def __init__(self, url: str, prefix: str, effects: Path, *, block: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), url, prefix, str(effects), "1" if block else "0"],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )

    async def wait_for(self, line: str, timeout: float = 15.0) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                got = await asyncio.to_thread(self.proc.stdout.readline)
                if not got:
                    raise AssertionError(f"process exited before printing {line}")
                if got.decode().strip() == line:
                    return

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


def effects_of(path: Path) -> Counter[str]:
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


@pytest.fixture
async def sender(nats_url: str) -> AsyncIterator[tuple[Mediator, str]]:
    prefix = f"f{uuid.uuid4().hex[:10]}"
    from .worker_proc import config

    async with NatsTransport(config(nats_url, prefix)) as transport:
        registry = HandlerRegistry()
        registry.add_types(Work, WorkOnce)
        async with Mediator(
            registry, options=CatgaOptions(routes=ROUTES), transport=transport
        ) as mediator:
            yield mediator, prefix


class TestKilledConsumer:
    @pytest.mark.parametrize("qos", [QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE])
    async def test_sigkill_mid_handler_is_redelivered_and_handled(
        self,
        qos: QoS,
        nats_url: str,
        sender: tuple[Mediator, str],
        procs: list[Proc],
        tmp_path: Path,
    ) -> None:
        """A consumer killed mid-handler: another process handles the message (QoS 2: once)."""
        mediator, prefix = sender
        effects = tmp_path / "effects.txt"
        event: Event = Work(n=1) if qos == QoS.AT_LEAST_ONCE else WorkOnce(n=1)
        await mediator.publish(event)
        doomed = Proc(nats_url, prefix, effects, block=True)
        procs.append(doomed)
        await doomed.wait_for("BLOCKED")
        doomed.kill()
        survivor = Proc(nats_url, prefix, effects, block=False)
        procs.append(survivor)
        await eventually(
            lambda: effects_of(effects)[f"effect {event.message_id}"] >= 1, timeout=20.0
        )
        canary: Event = Work(n=2) if qos == QoS.AT_LEAST_ONCE else WorkOnce(n=2)
        await mediator.publish(canary)
        await eventually(lambda: effects_of(effects)[f"effect {canary.message_id}"] == 1)
        seen = effects_of(effects)
        assert seen[f"start {event.message_id}"] >= 2  # killed once, then handled
        if qos == QoS.EXACTLY_ONCE:
            assert seen[f"effect {event.message_id}"] == 1


class TestServerRestart:
    async def test_kill_9_and_restart_during_1000_messages(
        self, own_nats_server: NatsServer
    ) -> None:
        """Every QoS 1 message whose publish returned is handled; consumers resume by themselves."""
        config = unique_config(
            own_nats_server.url, storage="file", publish_timeout=1.0, ack_wait=2.0
        )
        handled: set[str] = set()

        async def consume(delivery: Delivery) -> None:
            handled.add(delivery.envelope.message_id)
            await delivery.ack()

        published: list[str] = []
        async with NatsTransport(config) as consumer, NatsTransport(config) as producer:
            await consumer.subscribe("load", consume, group="g", qos=QoS.AT_LEAST_ONCE)
            for i in range(1000):
                if i == 300:
                    await asyncio.to_thread(own_nats_server.restart)
                sent = Envelope(message_id=f"m{i}", message_type="t", body=b"x")
                try:
                    await producer.publish("load", sent, qos=QoS.AT_LEAST_ONCE)
                except TransportError:
                    continue  # not confirmed: the caller would retry; not counted
                published.append(sent.message_id)
            assert len(published) >= 500
            await eventually(lambda: handled >= set(published), timeout=40.0, what="all handled")


class TestProducerDedup:
    async def test_publisher_retry_is_stored_once_also_after_a_restart(
        self, own_nats_server: NatsServer
    ) -> None:
        """The same message_id published again (also after kill -9) is stored once."""
        config = unique_config(own_nats_server.url, storage="file")
        sent = Envelope(message_id=f"m-{uuid.uuid4().hex}", message_type="t", body=b"x")
        async with NatsTransport(config) as transport:
            for _ in range(3):
                await transport.publish("pay", sent, qos=QoS.EXACTLY_ONCE)
            await transport.publish("pay", sent, qos=QoS.AT_LEAST_ONCE)
            await asyncio.to_thread(own_nats_server.restart)

            async def published_again() -> bool:
                with contextlib.suppress(TransportError):
                    await transport.publish("pay", sent, qos=QoS.EXACTLY_ONCE)
                    return True
                return False

            await eventually(published_again, timeout=20.0)
            info = await transport.client.jetstream().stream_info(config.stream_name)
            assert info.state.messages == 1


class TestBadInput:
    async def test_garbage_and_unknown_types_are_dead_lettered_and_the_worker_goes_on(
        self, config: NatsConfig
    ) -> None:
        """Garbage bytes and an unknown type are dead-lettered with reasons; the next is handled."""
        handled: list[int] = []

        @handles(Work)
        async def work(event: Work) -> None:
            handled.append(event.n)

        async with NatsTransport(config) as transport:
            mediator = Mediator(
                HandlerRegistry(work), options=CatgaOptions(routes=ROUTES), transport=transport
            )
            async with Worker(mediator):
                js = transport.client.jetstream()
                await js.publish(config.durable_subject("work"), b"\xde\xad\xbe\xef")
                unknown = Envelope(message_id="u1", message_type="nope.Nope", body=b"{}")
                await transport.publish("work", unknown, qos=QoS.AT_LEAST_ONCE)
                await mediator.publish(Work(n=7))
                await eventually(lambda: handled == [7])

                async def two_dead() -> bool:
                    return len(await transport.dead_letters("work")) == 2

                await eventually(two_dead)
            letters = await transport.dead_letters("work")
            reasons = {letter.envelope.message_id: letter.reason for letter in letters}
            assert "UnknownMessageTypeError" in reasons.pop("u1")
            [garbage] = reasons.values()
            assert garbage.startswith("undecodable: undecodable envelope")
            await mediator.aclose()


class TestConcurrentDuplicates:
    async def test_twelve_copies_across_three_consumers_commit_once(
        self, config: NatsConfig
    ) -> None:
        """12 stored copies of one QoS 2 id, three consumer processes: one effect, one result."""
        effects: Counter[str] = Counter()

        def registry() -> HandlerRegistry:
            @handles(WorkOnce)
            async def work_once(event: WorkOnce) -> None:
                effects[event.message_id] += 1
                await asyncio.sleep(0.05)

            return HandlerRegistry(work_once)

        event = WorkOnce(n=1)
        closers = []
        workers = []
        options = CatgaOptions(routes=ROUTES, retry=RetryPolicy(initial_delay=0.01))
        for _ in range(3):
            transport = NatsTransport(config)
            await transport.connect()
            store = NatsIdempotencyStore(config)
            mediator = Mediator(registry(), options=options, transport=transport, store=store)
            workers.append(Worker(mediator, busy_delay=0.05))
            closers.extend([mediator.aclose, transport.aclose, store.aclose])
        try:
            nc = await nats.connect(config.servers[0])
            body = workers[0].mediator.serializer.encode(event)
            copy = Envelope(message_id=event.message_id, message_type="WorkOnce", body=body, qos=2)
            from catga_nats._wire import encode

            js = nc.jetstream()
            for i in range(12):  # distinct Nats-Msg-Id: twelve stored copies
                await js.publish(
                    config.durable_subject("work2"),
                    encode(copy),
                    headers={"Nats-Msg-Id": f"copy-{i}"},
                )
            await nc.close()
            for worker in workers:
                await worker.start()
            await eventually(lambda: sum(w.health().handled for w in workers) == 12, timeout=20.0)
            assert effects[event.message_id] == 1
        finally:
            for worker in workers:
                await worker.stop()
            for close in closers:
                await close()


class TestMemoryStorageRestart:
    async def test_memory_buckets_and_streams_come_back_after_a_restart(
        self, own_nats_server: NatsServer
    ) -> None:
        """After kill -9, memory buckets and streams are re-created: claims and QoS 1 flow again."""
        from catga.typing import Acquired

        config = unique_config(own_nats_server.url, storage="memory", lease_storage="memory")
        handled: list[str] = []

        async def consume(delivery: Delivery) -> None:
            handled.append(delivery.envelope.message_id)
            await delivery.ack()

        store = NatsIdempotencyStore(config)
        try:
            async with NatsTransport(config) as transport:
                assert isinstance(await store.claim("k1", 30.0), Acquired)
                await transport.subscribe("mem", consume, group="g", qos=QoS.AT_LEAST_ONCE)
                await asyncio.to_thread(own_nats_server.restart)

                async def claimed() -> bool:
                    with contextlib.suppress(Exception):
                        return isinstance(await store.claim("k2", 30.0), Acquired)
                    return False

                await eventually(claimed, timeout=20.0, what="claims work again")
                sent = Envelope(message_id="after", message_type="t", body=b"x")

                async def published() -> bool:
                    with contextlib.suppress(TransportError):
                        await transport.publish("mem", sent, qos=QoS.AT_LEAST_ONCE)
                        return True
                    return False

                await eventually(published, timeout=20.0, what="publish works again")
                await eventually(lambda: "after" in handled, timeout=20.0, what="consumed")
        finally:
            await store.aclose()
