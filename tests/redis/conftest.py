"""Fixtures of the Redis backend tests: a unique key prefix per test, short timings."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from catga_redis import RedisConfig, RedisTransport

from ..server_fixtures import AnyRedis

MakeConfig = Callable[..., RedisConfig]


def short_config(url: str, prefix: str, **overrides: Any) -> RedisConfig:
    """A config with timings short enough for tests (a fresh consumer name each call)."""
    values: dict[str, Any] = {
        "url": url,
        "prefix": prefix,
        "block": 0.05,
        "claim_idle": 0.3,
        "claim_interval": 0.02,
        "max_deliveries": 5,
    }
    values.update(overrides)
    return RedisConfig(**values)


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def route() -> str:
    """A route name."""
    return f"r{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_config(redis_server: AnyRedis, prefix: str) -> MakeConfig:
    """Build configs on the session's server under this test's prefix."""

    def make(**overrides: Any) -> RedisConfig:
        return short_config(redis_server.url, prefix, **overrides)

    return make


@pytest.fixture
async def client(redis_server: AnyRedis) -> AsyncIterator[Redis]:
    """A raw redis-py client, to look at or write keys behind the transport's back."""
    raw = Redis.from_url(redis_server.url)
    yield raw
    await raw.aclose()


@pytest.fixture
async def transports(make_config: MakeConfig) -> AsyncIterator[Callable[..., Any]]:
    """Make connected transports (like separate processes); all closed at the end."""
    made: list[RedisTransport] = []

    async def make(**overrides: Any) -> RedisTransport:
        transport = RedisTransport(make_config(**overrides))
        made.append(transport)
        await transport.connect()
        return transport

    yield make
    for transport in reversed(made):
        await transport.aclose()
