"""RedisIdempotencyStore beyond the contract: key layout, shared clients, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from catga.exceptions import StoreError
from catga.typing import Acquired, Done
from catga_redis import RedisConfig, RedisIdempotencyStore
from catga_redis.exceptions import RedisStoreConnectionError

from ..servers import RedisServer

pytestmark = pytest.mark.redis


class TestRedisIdempotencyStore:
    async def test_keys_live_under_the_prefix_with_a_ttl(
        self, make_config: Callable[..., RedisConfig], client: Redis, prefix: str
    ) -> None:
        """A claim writes {prefix}:idem:{key} with the lease as ttl; complete swaps in the ttl."""
        store = RedisIdempotencyStore(make_config())
        claimed = await store.claim("Charge:1", 30.0)
        assert isinstance(claimed, Acquired)
        assert 0 < await client.pttl(f"{prefix}:idem:Charge:1") <= 30_000
        assert await store.complete("Charge:1", claimed.token, b"\x00result", 600.0)
        assert 30_000 < await client.pttl(f"{prefix}:idem:Charge:1") <= 600_000
        assert await store.claim("Charge:1", 30.0) == Done(b"\x00result")
        await store.aclose()

    async def test_shared_client_is_not_closed(
        self, make_config: Callable[..., RedisConfig], client: Redis
    ) -> None:
        """A store given a client leaves it open on aclose."""
        store = RedisIdempotencyStore(make_config(), client=client)
        assert isinstance(await store.claim("k", 1.0), Acquired)
        await store.aclose()
        assert await client.ping()

    async def test_server_down_raises_store_errors(
        self, own_redis_server: RedisServer, prefix: str
    ) -> None:
        """With Redis gone every call raises a StoreError that is also a ConnectionError."""
        store = RedisIdempotencyStore(RedisConfig(url=own_redis_server.url, prefix=prefix))
        own_redis_server.kill()
        with pytest.raises(RedisStoreConnectionError) as caught:
            await store.claim("k", 1.0)
        assert isinstance(caught.value, StoreError)
        with pytest.raises(StoreError):
            await store.complete("k", "t", b"", 1.0)
        await store.aclose()
        await store.aclose()
