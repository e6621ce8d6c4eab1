"""The nats backend of the conformance suite (set BACKEND to a Backend subclass)."""

from __future__ import annotations

import uuid

import pytest

from catga.typing import IdempotencyStore, Transport
from catga_nats import NatsConfig, NatsIdempotencyStore, NatsTransport

from .conftest import Backend


class NatsBackend(Backend):
    """A nats-server -js from the session fixture; a stream and buckets of its own per test."""

    ack_wait = 0.3

    def __init__(self, url: str) -> None:
        super().__init__()
        prefix = f"t{uuid.uuid4().hex[:12]}"
        self.config = NatsConfig(
            servers=url,
            prefix=prefix,
            storage="memory",
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliveries,
            fetch_timeout=0.25,
            lease_ttl=30.0,
            done_ttl=300.0,
        )

    @classmethod
    def create(cls, request: pytest.FixtureRequest) -> Backend:
        return cls(request.getfixturevalue("nats_server").url)

    def _new_transport(self) -> Transport:
        return NatsTransport(self.config)

    def _new_store(self) -> IdempotencyStore:
        return NatsIdempotencyStore(self.config)


BACKEND: type[Backend] | None = NatsBackend
