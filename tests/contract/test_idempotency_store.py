"""The idempotency store contract: claim, extend, complete, release, per backend."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from catga.typing import Acquired, ClaimResult, Done, IdempotencyStore, InProgress

from ..helpers import eventually
from .conftest import Backend

LEASE = 30.0
TTL = 300.0


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return f"test:{uuid.uuid4().hex}"


async def acquire(store: IdempotencyStore, key: str, lease: float = LEASE) -> str:
    """Claim ``key`` and return the token, failing the test if it is not free."""
    claimed = await store.claim(key, lease)
    assert isinstance(claimed, Acquired), claimed
    return claimed.token


async def claim_until_acquired(store: IdempotencyStore, key: str) -> Acquired:
    """Claim repeatedly until the key is free again (its lease or result expired)."""
    results: list[ClaimResult] = []

    async def acquired() -> bool:
        results.append(await store.claim(key, LEASE))
        return isinstance(results[-1], Acquired)

    await eventually(acquired, what=f"{key} free again")
    last = results[-1]
    assert isinstance(last, Acquired)
    return last


class TestClaim:
    async def test_new_key_is_acquired(self, store: IdempotencyStore, key: str) -> None:
        """Claiming a key nobody holds returns Acquired with a token."""
        claimed = await store.claim(key, LEASE)
        assert isinstance(claimed, Acquired)
        assert claimed.token

    async def test_second_claim_is_in_progress(self, backend: Backend, key: str) -> None:
        """A claim while another client holds the lease returns InProgress."""
        await acquire(await backend.store(), key)
        assert await (await backend.store()).claim(key, LEASE) == InProgress()

    async def test_concurrent_claims_have_one_winner(self, backend: Backend, key: str) -> None:
        """Of 20 concurrent claims of one key exactly one is Acquired."""
        stores = [await backend.store() for _ in range(4)]
        results = await asyncio.gather(*(stores[i % 4].claim(key, LEASE) for i in range(20)))
        assert sum(isinstance(r, Acquired) for r in results) == 1
        assert sum(isinstance(r, InProgress) for r in results) == 19


class TestComplete:
    async def test_done_returns_the_same_bytes(self, store: IdempotencyStore, key: str) -> None:
        """After complete, a claim returns Done with exactly the stored result."""
        token = await acquire(store, key)
        result = b'{"ok": true, "bytes": "\\u00e9\\u0000"}\x00\xff'
        assert await store.complete(key, token, result, TTL) is True
        assert await store.claim(key, LEASE) == Done(result)

    async def test_done_expires_after_ttl(
        self, backend: Backend, store: IdempotencyStore, key: str
    ) -> None:
        """Once the result's ttl has passed the key can be acquired again."""
        token = await acquire(store, key)
        assert await store.complete(key, token, b"r", backend.short) is True
        await claim_until_acquired(store, key)

    async def test_complete_with_a_wrong_token_is_refused(
        self, store: IdempotencyStore, key: str
    ) -> None:
        """complete with a token that never owned the key returns False and changes nothing."""
        await acquire(store, key)
        assert await store.complete(key, "not-the-token", b"r", TTL) is False
        assert await store.claim(key, LEASE) == InProgress()


class TestRelease:
    async def test_release_frees_the_key(self, store: IdempotencyStore, key: str) -> None:
        """After release the next claim is Acquired."""
        token = await acquire(store, key)
        await store.release(key, token)
        claimed = await store.claim(key, LEASE)
        assert isinstance(claimed, Acquired)
        assert claimed.token != token

    async def test_release_by_a_stale_token_keeps_the_new_owner(
        self, backend: Backend, store: IdempotencyStore, key: str
    ) -> None:
        """A stale token (its lease expired) cannot release the new owner's lease."""
        stale = await acquire(store, key, lease=backend.short)
        fresh = await claim_until_acquired(store, key)
        await store.release(key, stale)
        assert await store.claim(key, LEASE) == InProgress()
        assert await store.extend(key, fresh.token, LEASE) is True


class TestLease:
    async def test_extend_keeps_the_lease(self, store: IdempotencyStore, key: str) -> None:
        """The owner can extend its lease; the key stays in progress."""
        token = await acquire(store, key)
        assert await store.extend(key, token, LEASE) is True
        assert await store.claim(key, LEASE) == InProgress()

    async def test_expired_lease_goes_to_a_new_owner(
        self, backend: Backend, store: IdempotencyStore, key: str
    ) -> None:
        """After lease expiry a new claim wins; the stale token can neither extend nor complete."""
        stale = await acquire(store, key, lease=backend.short)
        fresh = await claim_until_acquired(store, key)
        assert fresh.token != stale
        assert await store.extend(key, stale, LEASE) is False
        assert await store.complete(key, stale, b"stale", TTL) is False
        assert await store.complete(key, fresh.token, b"fresh", TTL) is True
        assert await store.claim(key, LEASE) == Done(b"fresh")

    async def test_aclose_is_idempotent(self, backend: Backend) -> None:
        """Closing a store twice is fine."""
        store = await backend.store()
        await store.aclose()
        await store.aclose()
