"""The in-process dead-letter queue: bounded, inspectable, replayable."""

from __future__ import annotations

from typing import Any

import pytest
from attrs import frozen

from catga import (
    Context,
    DeadLetterEntry,
    Event,
    HandlerRegistry,
    InMemoryDeadLetterQueue,
    QoS,
    handles,
)
from catga.exceptions import DeadLetterError


@frozen(kw_only=True)
class Lost(Event):
    n: int


@handles(Lost)
async def on_lost(event: Lost) -> None:
    return None


def ctx(attempt: int = 1, qos: QoS = QoS.AT_LEAST_ONCE) -> Context:
    context = Context(Lost, HandlerRegistry(on_lost).handlers_for(Lost)[0], qos)
    context.attempt = attempt
    return context


def fill(queue: InMemoryDeadLetterQueue, count: int) -> list[DeadLetterEntry]:
    return [queue.add(Lost(n=n), ctx(), RuntimeError(f"failed {n}")) for n in range(count)]


class TestInMemoryDeadLetterQueue:
    def test_add_records_why(self) -> None:
        """An entry carries the message, handler, reason, error, attempts and QoS."""
        queue = InMemoryDeadLetterQueue()
        message = Lost(n=1)
        error = ValueError("bad input")
        entry = queue.add(message, ctx(attempt=3, qos=QoS.EXACTLY_ONCE), error)
        assert entry.message is message
        assert entry.handler == f"{__name__}.on_lost"
        assert entry.reason == "ValueError: bad input"
        assert entry.error is error
        assert entry.attempts == 3
        assert entry.qos == 2
        assert entry.dead_lettered_at > 0
        assert queue.entries() == [entry]

    def test_entries_are_oldest_first_with_growing_ids(self) -> None:
        """entries() lists dead letters in the order they arrived, ids increasing."""
        queue = InMemoryDeadLetterQueue()
        added = fill(queue, 5)
        assert queue.entries() == added
        ids = [e.id for e in added]
        assert ids == sorted(ids)
        assert len(set(ids)) == 5

    def test_bounded_queue_drops_the_oldest(self) -> None:
        """Past its limit the queue drops the oldest entries first."""
        queue = InMemoryDeadLetterQueue(limit=3)
        added = fill(queue, 5)
        assert queue.entries() == added[2:]
        assert len(queue) == 3

    def test_len_and_clear(self) -> None:
        """len() counts entries; clear() drops them all."""
        queue = InMemoryDeadLetterQueue()
        fill(queue, 4)
        assert len(queue) == 4
        queue.clear()
        assert len(queue) == 0
        assert queue.entries() == []

    def test_ids_are_not_reused_after_clear(self) -> None:
        """A cleared queue keeps counting, so an old id never names a new entry."""
        queue = InMemoryDeadLetterQueue()
        (old,) = fill(queue, 1)
        queue.clear()
        (new,) = fill(queue, 1)
        assert new.id != old.id

    def test_limit_must_be_positive(self) -> None:
        """A queue of size zero is refused."""
        with pytest.raises(ValueError, match="limit"):
            InMemoryDeadLetterQueue(limit=0)

    async def test_replay_removes_the_entry_and_dispatches_it(self) -> None:
        """replay hands the entry to dispatch, returns its result, and removes it."""
        queue = InMemoryDeadLetterQueue()
        first, second = fill(queue, 2)
        handed: list[DeadLetterEntry] = []

        async def dispatch(entry: DeadLetterEntry) -> Any:
            handed.append(entry)
            return "replayed"

        assert await queue.replay(first.id, dispatch) == "replayed"
        assert handed == [first]
        assert queue.entries() == [second]

    async def test_replay_of_an_unknown_id(self) -> None:
        """Replaying a missing (or already replayed) id raises DeadLetterError, a LookupError."""
        queue = InMemoryDeadLetterQueue()
        (entry,) = fill(queue, 1)

        async def dispatch(entry: DeadLetterEntry) -> None:
            return None

        await queue.replay(entry.id, dispatch)
        with pytest.raises(DeadLetterError) as caught:
            await queue.replay(entry.id, dispatch)
        assert isinstance(caught.value, LookupError)

    async def test_replay_of_a_dropped_entry(self) -> None:
        """An entry dropped for space can no longer be replayed."""
        queue = InMemoryDeadLetterQueue(limit=1)
        oldest, _ = fill(queue, 2)

        async def dispatch(entry: DeadLetterEntry) -> None:
            return None

        with pytest.raises(DeadLetterError):
            await queue.replay(oldest.id, dispatch)
