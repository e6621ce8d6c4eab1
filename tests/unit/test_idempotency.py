"""Exactly-once across mediators sharing a store: leases, renewal, waiting, takeover."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

import pytest
from attrs import frozen
from structlog.testing import capture_logs

from catga import (
    CatgaOptions,
    Command,
    HandlerRegistry,
    IdempotencyOptions,
    InMemoryIdempotencyStore,
    Mediator,
    QoS,
    handles,
)
from catga.exceptions import InProgressError, StoreError
from catga.typing import Acquired, Done, InProgress


def uid() -> str:
    """A message id unique to the calling test."""
    return f"test-{uuid.uuid4().hex}"


def options(**idempotency: Any) -> CatgaOptions:
    return CatgaOptions(idempotency=IdempotencyOptions(**idempotency))


async def wait_for(event: asyncio.Event) -> None:
    """Wait for an event, failing the test instead of hanging."""
    async with asyncio.timeout(5):
        await event.wait()


@frozen(kw_only=True)
class Book(Command[str]):
    seat: str
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@handles(Book)
class Booking:
    """Books a seat; optionally takes ``duration`` seconds or waits for ``gate``."""

    def __init__(
        self, name: str, *, duration: float = 0.0, gate: asyncio.Event | None = None
    ) -> None:
        self.name = name
        self.duration = duration
        self.gate = gate
        self.calls = 0
        self.started = asyncio.Event()

    async def handle(self, command: Book) -> str:
        self.calls += 1
        self.started.set()
        if self.duration:
            await asyncio.sleep(self.duration)  # the handler's own work takes this long
        if self.gate is not None:
            await self.gate.wait()
        return f"{command.seat} booked by {self.name}"


class RecordingStore(InMemoryIdempotencyStore):
    """An in-memory store that reports lease renewals; ``fail`` makes them raise."""

    def __init__(self, *, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail = fail
        self.renewals: list[bool] = []
        self.renewal_failed = asyncio.Event()
        self.renewal_refused = asyncio.Event()

    async def extend(self, key: str, token: str, lease: float) -> bool:
        if self.fail:
            self.renewal_failed.set()
            raise ConnectionError("store unreachable")
        renewed = await super().extend(key, token, lease)
        self.renewals.append(renewed)
        if not renewed:
            self.renewal_refused.set()
        return renewed


class TestAcrossMediators:
    async def test_long_handler_keeps_its_lease(self) -> None:
        """A handler running for several leases keeps the key; the duplicate gets its result."""
        store = InMemoryIdempotencyStore()
        first, second = Booking("first", duration=0.35), Booking("second")
        command = Book(seat="1A", message_id=uid())
        settings = options(lease=0.1)
        async with (
            Mediator(HandlerRegistry(first), options=settings, store=store) as here,
            Mediator(HandlerRegistry(second), options=settings, store=store) as there,
        ):
            running = asyncio.create_task(here.send(command))
            await wait_for(first.started)
            duplicate = await there.send(command)
            assert await running == duplicate == "1A booked by first"
        assert first.calls == 1
        assert second.calls == 0

    async def test_duplicate_waits_past_wait_for_duplicate(self) -> None:
        """A duplicate still running elsewhere after wait_for_duplicate raises InProgressError."""
        store = InMemoryIdempotencyStore()
        gate = asyncio.Event()
        first, second = Booking("first", gate=gate), Booking("second")
        command = Book(seat="2B", message_id=uid())
        async with (
            Mediator(HandlerRegistry(first), store=store) as here,
            Mediator(
                HandlerRegistry(second), store=store, options=options(wait_for_duplicate=0.05)
            ) as there,
        ):
            running = asyncio.create_task(here.send(command))
            await wait_for(first.started)
            with pytest.raises(InProgressError) as caught:
                await there.send(command)
            gate.set()
            assert await running == "2B booked by first"
            assert await there.send(command) == "2B booked by first"
        assert command.message_id in caught.value.key
        assert len(there.dead_letters) == 0
        assert second.calls == 0

    async def test_zero_wait_fails_a_busy_duplicate_at_once(self) -> None:
        """wait_for_duplicate=0 raises InProgressError without polling."""
        store = InMemoryIdempotencyStore()
        command = Book(seat="3C", message_id=uid())
        await store.claim(f"Book:{command.message_id}", 30.0)
        async with Mediator(
            HandlerRegistry(Booking("x")), store=store, options=options(wait_for_duplicate=0)
        ) as mediator:
            with pytest.raises(InProgressError):
                await mediator.send(command)

    async def test_expired_lease_is_taken_over(self) -> None:
        """A claim whose owner vanished (its lease ran out) is taken over and the handler runs."""
        store = InMemoryIdempotencyStore()
        handler = Booking("survivor")
        command = Book(seat="4D", message_id=uid())
        claim = await store.claim(f"Book:{command.message_id}", 0.05)  # a crashed process
        assert isinstance(claim, Acquired)
        async with Mediator(HandlerRegistry(handler), store=store) as mediator:
            assert await mediator.send(command) == "4D booked by survivor"
        assert handler.calls == 1

    async def test_stored_result_is_answered_from_the_store(self) -> None:
        """A duplicate arriving at another mediator after completion never runs its handler."""
        store = InMemoryIdempotencyStore()
        first, second = Booking("first"), Booking("second")
        command = Book(seat="5E", message_id=uid())
        async with (
            Mediator(HandlerRegistry(first), store=store) as here,
            Mediator(HandlerRegistry(second), store=store) as there,
        ):
            assert await here.send(command) == await there.send(command)
        assert (first.calls, second.calls) == (1, 0)


class TestLeaseKeeper:
    async def test_renewal_failure_is_logged_and_the_handler_finishes(self) -> None:
        """A store error while renewing is logged as a warning; the attempt goes on."""
        store = RecordingStore(fail=True)
        gate = asyncio.Event()
        handler = Booking("only", gate=gate)
        with capture_logs() as logs:
            async with Mediator(
                HandlerRegistry(handler), store=store, options=options(lease=0.03)
            ) as mediator:
                running = asyncio.create_task(mediator.send(Book(seat="6F", message_id=uid())))
                await wait_for(store.renewal_failed)
                gate.set()
                assert await running == "6F booked by only"
        warnings = [e for e in logs if e["event"] == "lease renewal failed"]
        assert warnings
        assert warnings[0]["log_level"] == "warning"
        assert "store unreachable" in warnings[0]["error"]

    async def test_lost_lease_is_logged_and_the_committed_result_wins(self) -> None:
        """When another attempt takes the key over, the first logs it and returns its result."""
        now = [0.0]
        store = RecordingStore(clock=lambda: now[0])
        gate = asyncio.Event()
        first, second = Booking("first", gate=gate), Booking("second")
        command = Book(seat="7G", message_id=uid())
        settings = options(lease=0.03)
        with capture_logs() as logs:
            async with (
                Mediator(HandlerRegistry(first), store=store, options=settings) as here,
                Mediator(HandlerRegistry(second), store=store, options=settings) as there,
            ):
                running = asyncio.create_task(here.send(command))
                await wait_for(first.started)
                now[0] += 60.0  # the store's clock passes the first attempt's lease
                assert await there.send(command) == "7G booked by second"
                await wait_for(store.renewal_refused)
                gate.set()
                assert await running == "7G booked by second"
        events = [e["event"] for e in logs if e["log_level"] == "error"]
        assert "idempotency lease lost while the handler runs" in events
        assert "idempotency commit refused: lease lost" in events

    async def test_refused_commit_without_a_stored_result_is_in_progress(self) -> None:
        """A lost lease with no committed result raises InProgressError, never success."""
        now = [0.0]
        store = RecordingStore(clock=lambda: now[0])
        gate = asyncio.Event()
        first = Booking("first", gate=gate)
        command = Book(seat="7H", message_id=uid())
        async with Mediator(HandlerRegistry(first), store=store, options=options()) as here:
            running = asyncio.create_task(here.send(command))
            await wait_for(first.started)
            now[0] += 600.0  # our lease runs out and another attempt takes the key...
            other = await store.claim(f"Book:{command.message_id}", 60.0)
            now[0] += 120.0  # ... whose lease runs out as well: nothing is stored
            gate.set()
            with pytest.raises(InProgressError):
                await running
        assert isinstance(other, Acquired)

    async def test_aclose_stops_the_renewal_task(self) -> None:
        """After aclose no lease-keeper task is left running."""
        mediator = Mediator(HandlerRegistry(Booking("x")))
        await mediator.send(Book(seat="8H", message_id=uid()))
        await mediator.aclose()
        assert [t for t in asyncio.all_tasks() if t.get_name() == "catga-lease-keeper"] == []


class TestInMemoryStore:
    async def test_claim_complete_duplicate(self) -> None:
        """claim -> Acquired, a second claim -> InProgress, after complete -> Done(result)."""
        store = InMemoryIdempotencyStore()
        claim = await store.claim("k", 10.0)
        assert isinstance(claim, Acquired)
        assert isinstance(await store.claim("k", 10.0), InProgress)
        assert await store.complete("k", claim.token, b"result", 10.0)
        assert await store.claim("k", 10.0) == Done(b"result")

    async def test_release_frees_the_key(self) -> None:
        """After release the key can be claimed again."""
        store = InMemoryIdempotencyStore()
        claim = await store.claim("k", 10.0)
        assert isinstance(claim, Acquired)
        await store.release("k", claim.token)
        assert isinstance(await store.claim("k", 10.0), Acquired)

    async def test_operations_are_owner_checked(self) -> None:
        """A wrong token can neither extend, complete nor release the key."""
        store = InMemoryIdempotencyStore()
        await store.claim("k", 10.0)
        assert not await store.extend("k", "not-mine", 10.0)
        assert not await store.complete("k", "not-mine", b"x", 10.0)
        await store.release("k", "not-mine")
        assert isinstance(await store.claim("k", 10.0), InProgress)

    async def test_leases_and_results_expire(self) -> None:
        """An expired lease can be taken over; an expired result is forgotten."""
        now = [0.0]
        store = InMemoryIdempotencyStore(clock=lambda: now[0])
        old = await store.claim("k", 5.0)
        now[0] = 6.0
        new = await store.claim("k", 5.0)
        assert isinstance(old, Acquired)
        assert isinstance(new, Acquired)
        assert not await store.extend("k", old.token, 5.0)
        assert await store.extend("k", new.token, 5.0)
        assert await store.complete("k", new.token, b"r", ttl=1.0)
        now[0] = 8.0
        assert isinstance(await store.claim("k", 5.0), Acquired)

    async def test_full_store_drops_oldest_results(self) -> None:
        """At max_entries the oldest completed results make room for new claims."""
        store = InMemoryIdempotencyStore(max_entries=10)
        for i in range(10):
            claim = await store.claim(f"k{i}", 10.0)
            assert isinstance(claim, Acquired)
            await store.complete(f"k{i}", claim.token, b"r", 100.0)
        assert isinstance(await store.claim("new", 10.0), Acquired)
        assert len(store) <= 10
        assert isinstance(await store.claim("k0", 10.0), Acquired)
        assert await store.claim("k9", 10.0) == Done(b"r")

    async def test_full_of_live_leases_is_a_store_error(self) -> None:
        """When every entry is a live lease, claim raises StoreError."""
        store = InMemoryIdempotencyStore(max_entries=2)
        await store.claim("a", 10.0)
        await store.claim("b", 10.0)
        with pytest.raises(StoreError, match="full"):
            await store.claim("c", 10.0)

    async def test_oldest_expired_entry_makes_room_when_full(self) -> None:
        """A full store drops its oldest expired entry to take a new key."""
        now = [0.0]
        store = InMemoryIdempotencyStore(max_entries=2, clock=lambda: now[0])
        await store.claim("a", 1.0)
        await store.claim("b", 1.0)
        now[0] = 2.0
        assert isinstance(await store.claim("c", 1.0), Acquired)
        assert len(store) == 2
        assert isinstance(await store.claim("b", 1.0), Acquired)  # expired, kept until needed

    def test_max_entries_must_be_positive(self) -> None:
        """max_entries < 1 is refused."""
        with pytest.raises(ValueError, match="max_entries"):
            InMemoryIdempotencyStore(max_entries=0)

    async def test_aclose_is_harmless(self) -> None:
        """aclose exists for the protocol and changes nothing."""
        store = InMemoryIdempotencyStore()
        await store.aclose()
        assert isinstance(await store.claim("k", 1.0), Acquired)
