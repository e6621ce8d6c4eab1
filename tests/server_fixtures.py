"""Fixtures that start real broker servers on free loopback ports.

Session-scoped ``redis_server`` / ``nats_server`` are shared by tests that only
need a server (or point at ``CATGA_REDIS_URL`` / ``CATGA_NATS_URL`` when set);
``own_redis_server`` / ``own_nats_server`` give a test its own process to kill
and restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import NatsServer, RedisServer, env_url


class ExternalServer:
    """A server the user runs: it has a URL but cannot be killed by tests."""

    def __init__(self, url: str) -> None:
        self.url = url


AnyRedis = RedisServer | ExternalServer
AnyNats = NatsServer | ExternalServer


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AnyRedis]:
    """A redis-server for the session (AOF on, noeviction)."""
    url = env_url("CATGA_REDIS_URL")
    if url:
        yield ExternalServer(url)
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyNats]:
    """A nats-server -js for the session (file store in a temp dir)."""
    url = env_url("CATGA_NATS_URL")
    if url:
        yield ExternalServer(url)
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test, which may kill -9 and restart it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server -js for one test, which may kill -9 and restart it."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.kill()
