"""InMemoryIdempotencyStore against a dict model, with a fake clock (memory backend only)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from attrs import define
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from catga import InMemoryIdempotencyStore
from catga.exceptions import StoreError
from catga.typing import Acquired, Done, InProgress

T = TypeVar("T")

KEYS = st.sampled_from(["a", "b", "c"])
SECONDS = st.integers(min_value=0, max_value=5).map(float)
RESULTS = st.binary(max_size=8)


@define
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@define
class Entry:
    """The model of one key: held by ``token`` until ``expires``, or done with ``result``."""

    token: str | None
    expires: float
    result: bytes = b""


class StoreModel(RuleBasedStateMachine):
    """Every operation on the store gives what the model predicts.

    The model is a dict in insertion order (a claim re-inserts, extend and complete
    update in place), so it also predicts which entries a full store drops.
    """

    tokens = Bundle("tokens")
    max_entries = 100_000

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = InMemoryIdempotencyStore(max_entries=self.max_entries, clock=self.clock)
        self.model: dict[str, Entry] = {}
        # Stateful tests are synchronous: drive the async store on a private loop.
        self.loop = asyncio.new_event_loop()

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def live(self, key: str) -> Entry | None:
        entry = self.model.get(key)
        return entry if entry is not None and entry.expires > self.clock.now else None

    def owned(self, key: str, token: str) -> Entry | None:
        entry = self.live(key)
        return entry if entry is not None and entry.token == token else None

    def make_room(self) -> bool:
        """Drop the oldest expired or done entries, a tenth of the bound; False if still full."""
        victims = [
            k for k, e in self.model.items() if e.token is None or e.expires <= self.clock.now
        ]
        for key in victims[: max(1, self.max_entries // 10)]:
            del self.model[key]
        return len(self.model) < self.max_entries

    @rule(target=tokens, key=KEYS, lease=SECONDS)
    def claim(self, key: str, lease: float) -> Any:
        entry = self.live(key)
        if entry is not None:
            got = self.run(self.store.claim(key, lease))
            assert got == (InProgress() if entry.token is not None else Done(entry.result))
            return multiple()
        if key not in self.model and len(self.model) >= self.max_entries and not self.make_room():
            with pytest.raises(StoreError):
                self.run(self.store.claim(key, lease))
            return multiple()
        got = self.run(self.store.claim(key, lease))
        assert isinstance(got, Acquired)
        assert all(e.token != got.token for e in self.model.values())
        self.model.pop(key, None)
        self.model[key] = Entry(got.token, self.clock.now + lease)
        return (key, got.token)

    @rule(held=tokens, lease=SECONDS)
    def extend(self, held: tuple[str, str], lease: float) -> None:
        key, token = held
        entry = self.owned(key, token)
        assert self.run(self.store.extend(key, token, lease)) is (entry is not None)
        if entry is not None:
            entry.expires = self.clock.now + lease

    @rule(held=tokens, result=RESULTS, ttl=SECONDS)
    def complete(self, held: tuple[str, str], result: bytes, ttl: float) -> None:
        key, token = held
        entry = self.owned(key, token)
        assert self.run(self.store.complete(key, token, result, ttl)) is (entry is not None)
        if entry is not None:
            self.model[key] = Entry(None, self.clock.now + ttl, result)

    @rule(held=tokens)
    def release(self, held: tuple[str, str]) -> None:
        key, token = held
        self.run(self.store.release(key, token))
        if self.owned(key, token) is not None:
            del self.model[key]

    @rule(seconds=SECONDS)
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def same_size(self) -> None:
        assert len(self.store) == len(self.model) <= self.max_entries


class BoundedStoreModel(StoreModel):
    """The same, with room for two keys of three: eviction and refusal are exercised."""

    max_entries = 2


@pytest.mark.parametrize("machine", [StoreModel, BoundedStoreModel])
def test_store_matches_model(machine: type[StoreModel]) -> None:
    """Claim, extend, complete, release and time passing agree with a dict model."""
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        machine, settings=settings(max_examples=200, stateful_step_count=40, deadline=None)
    )
