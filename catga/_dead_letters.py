"""The in-process dead-letter queue: bounded, inspectable, replayable."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import frozen

from .exceptions import DeadLetterError

__all__ = ["DeadLetterEntry", "InMemoryDeadLetterQueue"]


@frozen
class DeadLetterEntry:
    """A message whose handler failed for good in this process.

    Attributes:
        id: the entry's id in the queue, for :meth:`InMemoryDeadLetterQueue.replay`.
        message: the message itself.
        handler: name of the handler that failed.
        reason: the error, as ``Type: text``.
        error: the exception.
        attempts: how many attempts were made.
        qos: the quality of service it was dispatched with.
        dead_lettered_at: Unix time in seconds.
    """

    id: int
    message: Any
    handler: str
    reason: str
    error: BaseException
    attempts: int
    qos: int
    dead_lettered_at: float


class InMemoryDeadLetterQueue:
    """Keeps the last ``limit`` dead letters of this process, oldest dropped first."""

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._entries: OrderedDict[int, DeadLetterEntry] = OrderedDict()
        self._ids = itertools.count(1)

    def add(self, message: Any, ctx: Any, error: BaseException) -> DeadLetterEntry:
        """Record a failed message (called by the dead-letter behaviour)."""
        entry = DeadLetterEntry(
            id=next(self._ids),
            message=message,
            handler=ctx.handler.name,
            reason=f"{type(error).__name__}: {error}",
            error=error,
            attempts=ctx.attempt,
            qos=int(ctx.qos),
            dead_lettered_at=time.time(),
        )
        self._entries[entry.id] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        return entry

    def entries(self) -> list[DeadLetterEntry]:
        """Return the dead letters, oldest first."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    async def replay(
        self, entry_id: int, dispatch: Callable[[DeadLetterEntry], Awaitable[Any]]
    ) -> Any:
        """Remove an entry and hand it to ``dispatch`` (``Mediator.replay_dead_letter`` does this).

        If the dispatch fails again the message is dead-lettered again under a new id.

        Raises:
            DeadLetterError: no entry with that id.
        """
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            raise DeadLetterError(f"no dead letter with id {entry_id}; list them with entries()")
        return await dispatch(entry)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
