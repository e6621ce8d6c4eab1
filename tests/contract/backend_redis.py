"""The redis backend of the conformance suite (set BACKEND to a Backend subclass)."""

from __future__ import annotations

import uuid

import pytest

from catga.typing import IdempotencyStore, Transport

from .conftest import Backend

try:
    from catga_redis import RedisConfig, RedisIdempotencyStore, RedisTransport
except ImportError:  # pragma: no cover - the redis extra is not installed
    RedisConfig = None  # type: ignore[assignment,misc]


class RedisBackend(Backend):
    """Transports and stores on the session's redis-server, under a prefix of their own."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:12]}"

    @classmethod
    def create(cls, request: pytest.FixtureRequest) -> Backend:
        return cls(request.getfixturevalue("redis_server").url)

    def config(self) -> RedisConfig:
        """A config with short timings (a fresh consumer name per client)."""
        return RedisConfig(
            url=self.url,
            prefix=self.prefix,
            block=0.05,
            claim_idle=self.ack_wait,
            claim_interval=0.02,
            max_deliveries=self.max_deliveries,
            socket_timeout=5.0,
        )

    def _new_transport(self) -> Transport:
        return RedisTransport(self.config())

    def _new_store(self) -> IdempotencyStore:
        return RedisIdempotencyStore(self.config())


BACKEND: type[Backend] | None = RedisBackend if RedisConfig is not None else None
