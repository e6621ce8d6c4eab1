"""In-memory idempotency store: bounded, with leases and retention like the real ones."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from .exceptions import StoreError
from .typing import Acquired, ClaimResult, Done, InProgress

__all__ = ["InMemoryIdempotencyStore"]

_IN_PROGRESS = InProgress()


# (owner token or None once done, expiry on the store's clock, encoded result)
_Entry = tuple[str | None, float, bytes]


class InMemoryIdempotencyStore:
    """An :class:`~catga.typing.IdempotencyStore` in this process's memory.

    Entries expire (leases after ``lease``, results after ``ttl``) and at most
    ``max_entries`` are kept: when full, the oldest expired or completed entries are
    dropped (a tenth of the bound at a time). Leases held by running attempts are never dropped;
    when every entry is a live lease, ``claim`` raises :class:`StoreError`.

    Args:
        max_entries: bound on keys held at once.
        clock: seconds, monotonic; tests may pass their own.
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._entries: dict[str, _Entry] = {}
        self._max = max_entries
        self._clock = clock
        self._tokens = itertools.count(1)

    async def claim(self, key: str, lease: float) -> ClaimResult:
        """Take the key, or report it in progress or done (see the protocol)."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            if entry[1] > now:
                return _IN_PROGRESS if entry[0] is not None else Done(entry[2])
            # Expired: re-insert below so iteration order stays oldest-first for eviction.
            del self._entries[key]
        elif len(self._entries) >= self._max:
            self._make_room(now)
        token = str(next(self._tokens))
        self._entries[key] = (token, now + lease, b"")
        return Acquired(token)

    async def extend(self, key: str, token: str, lease: float) -> bool:
        """Renew the lease if ``token`` still owns it."""
        if self._owned(key, token) is None:
            return False
        self._entries[key] = (token, self._clock() + lease, b"")
        return True

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Store the result if ``token`` still owns the key."""
        if self._owned(key, token) is None:
            return False
        self._entries[key] = (None, self._clock() + ttl, result)
        return True

    async def release(self, key: str, token: str) -> None:
        """Drop the lease if ``token`` still owns it."""
        if self._owned(key, token) is not None:
            del self._entries[key]

    async def aclose(self) -> None:
        """Nothing to close; kept for the protocol."""

    def __len__(self) -> int:
        return len(self._entries)

    def _owned(self, key: str, token: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] != token or entry[1] <= self._clock():
            return None
        return entry

    def _make_room(self, now: float) -> None:
        # Oldest first (dicts keep insertion order): drop a tenth of the bound in expired
        # or completed entries at once, so the scan is amortised over many claims.
        budget = max(1, self._max // 10)
        victims: list[str] = []
        for key, (token, expires, _) in self._entries.items():
            if token is None or expires <= now:
                victims.append(key)
                if len(victims) >= budget:
                    break
        for key in victims:
            del self._entries[key]
        if len(self._entries) >= self._max:
            raise StoreError(
                f"idempotency store is full: {self._max} attempts in progress at once; "
                "raise max_entries or lower concurrency"
            )
