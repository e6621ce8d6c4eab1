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

# Set on an exception once it has been dead-lettered.
_MARK = "__catga_dead_lettered__"


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

    def add(self, message: Any, ctx: Any, error: BaseException) -> DeadLetterEntry | None:
        """Record a failed message (called by the dead-letter behaviour).

        Concurrent QoS 2 duplicates share one failed attempt and so one exception:
        it is recorded once (``None`` is returned for the repeats).
        """
        if getattr(error, _MARK, False):
            return None
        setattr(error, _MARK, True)
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

        On success the entry is removed. If the dispatch fails and is dead-lettered
        again, the old entry gives way to the new one; any other failure keeps it.

        Raises:
            DeadLetterError: no entry with that id.
        """
        entry = self._entries.get(entry_id)
        if entry is None:
            raise DeadLetterError(f"no dead letter with id {entry_id}; list them with entries()")
        try:
            result = await dispatch(entry)
        except Exception as exc:
            # Keep it unless the failure was dead-lettered again (under a new id).
            if getattr(exc, _MARK, False):
                self._entries.pop(entry_id, None)
            raise
        self._entries.pop(entry_id, None)
        return result

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
