"""The KV idempotency store beyond the contract: take-over, stale owners, races, sharing."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from catga.typing import Acquired, Done, InProgress
from catga_nats import NatsConfig, NatsIdempotencyStore
from catga_nats._idempotency import _kv_key

from ..helpers import eventually

pytestmark = pytest.mark.nats


@pytest.fixture
def key() -> str:
    """A key with characters KV keys do not allow."""
    return f"Cmd:{uuid.uuid4().hex} é/*>"


class TestClaim:
    async def test_keys_with_any_characters_work(
        self, store: NatsIdempotencyStore, key: str
    ) -> None:
        """Keys are encoded, so colons, spaces and wildcards are fine."""
        claimed = await store.claim(key, 30.0)
        assert isinstance(claimed, Acquired)
        assert await store.complete(key, claimed.token, b"ok", 60.0)
        assert await store.claim(key, 30.0) == Done(b"ok")

    async def test_expired_lease_is_taken_over_and_the_stale_owner_refused(
        self, config: NatsConfig, key: str
    ) -> None:
        """After the lease ends a second store takes over; the first can no longer commit."""
        first, second = NatsIdempotencyStore(config), NatsIdempotencyStore(config)
        try:
            stale = await first.claim(key, 0.05)
            assert isinstance(stale, Acquired)
            results: list[object] = []

            async def taken() -> bool:
                results.append(await second.claim(key, 30.0))
                return isinstance(results[-1], Acquired)

            await eventually(taken)
            fresh = results[-1]
            assert isinstance(fresh, Acquired)
            assert await first.complete(key, stale.token, b"stale", 60.0) is False
            assert await first.extend(key, stale.token, 30.0) is False
            await first.release(key, stale.token)
            assert await second.complete(key, fresh.token, b"fresh", 60.0) is True
            assert await first.claim(key, 30.0) == Done(b"fresh")
        finally:
            await first.aclose()
            await second.aclose()

    async def test_a_lease_won_after_a_commit_returns_done(
        self, store: NatsIdempotencyStore, config: NatsConfig, key: str
    ) -> None:
        """If the lease is free but a result exists (commit raced the claim), claim says Done."""
        token = (await store.claim(key, 30.0)).token  # type: ignore[union-attr]
        assert await store.complete(key, token, b"r", 60.0)
        nc = await nats.connect(config.servers[0])
        try:
            leases = await nc.jetstream().key_value(config.lease_bucket_name)
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await leases.get(_kv_key(key))
        finally:
            await nc.close()
        assert await store.claim(key, 30.0) == Done(b"r")

    async def test_concurrent_claims_across_stores_have_one_winner(
        self, config: NatsConfig, key: str
    ) -> None:
        """30 concurrent claims from 3 stores: one Acquired, the rest InProgress."""
        stores = [NatsIdempotencyStore(config) for _ in range(3)]
        try:
            results = await asyncio.gather(*(stores[i % 3].claim(key, 30.0) for i in range(30)))
        finally:
            for s in stores:
                await s.aclose()
        assert sum(isinstance(r, Acquired) for r in results) == 1
        assert sum(isinstance(r, InProgress) for r in results) == 29

    async def test_second_commit_is_refused(self, store: NatsIdempotencyStore, key: str) -> None:
        """A result is committed once: a second complete by a later owner returns False."""
        first = await store.claim(key, 0.05)
        assert isinstance(first, Acquired)
        results: list[object] = []

        async def taken() -> bool:
            results.append(await store.claim(key, 30.0))
            return isinstance(results[-1], Acquired)

        await eventually(taken)
        second = results[-1]
        assert isinstance(second, Acquired)
        assert await store.complete(key, second.token, b"two", 60.0)
        assert await store.complete(key, first.token, b"one", 60.0) is False
        assert await store.claim(key, 30.0) == Done(b"two")


class TestLifecycle:
    async def test_shared_client_is_not_closed(self, config: NatsConfig, key: str) -> None:
        """A store given a connection uses it and leaves it open on aclose."""
        nc = await nats.connect(config.servers[0])
        store = NatsIdempotencyStore(config, client=nc)
        assert isinstance(await store.claim(key, 30.0), Acquired)
        await store.aclose()
        assert not nc.is_closed
        await nc.close()

    async def test_lease_longer_than_the_bucket_ttl_warns(self, nats_url: str, key: str) -> None:
        """A lease beyond the bucket TTL is logged: the bucket TTL is the upper bound."""
        from structlog.testing import capture_logs

        from .conftest import unique_config

        store = NatsIdempotencyStore(unique_config(nats_url, lease_ttl=1.0))
        try:
            with capture_logs() as logs:
                await store.claim(key, 5.0)
            assert any("TTL" in e["event"] for e in logs)
        finally:
            await store.aclose()
