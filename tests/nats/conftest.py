"""NATS backend test fixtures: a stream and buckets of its own per test, on the session server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from catga_nats import NatsConfig, NatsIdempotencyStore, NatsTransport


def unique_config(url: str, **overrides: object) -> NatsConfig:
    """A config with its own prefix (so its own stream and buckets) and short timings."""
    settings: dict[str, object] = {
        "servers": url,
        "prefix": f"t{uuid.uuid4().hex[:12]}",
        "storage": "memory",
        "ack_wait": 0.5,
        "max_deliver": 3,
        "fetch_timeout": 0.25,
        "lease_ttl": 30.0,
        "done_ttl": 300.0,
    }
    settings.update(overrides)
    return NatsConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def nats_url(nats_server: object) -> str:
    """The session server's URL."""
    return str(nats_server.url)  # type: ignore[attr-defined]


@pytest.fixture
def config(nats_url: str) -> NatsConfig:
    """A config no other test shares."""
    return unique_config(nats_url)


@pytest.fixture
async def transport(config: NatsConfig) -> AsyncIterator[NatsTransport]:
    """A connected transport."""
    async with NatsTransport(config) as transport:
        yield transport


@pytest.fixture
async def store(config: NatsConfig) -> AsyncIterator[NatsIdempotencyStore]:
    """A connected idempotency store."""
    store = NatsIdempotencyStore(config)
    await store.connect()
    yield store
    await store.aclose()


@pytest.fixture
def route() -> str:
    """A route no other test uses."""
    return f"r.{uuid.uuid4().hex[:8]}"
