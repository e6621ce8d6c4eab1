"""Backends for the conformance suite: every backend passes the same tests.

A backend is a :class:`Backend`: it hands out clients of one broker (each like a
separate process) and idempotency stores, and it says how long its short timings
are. To add one, subclass :class:`Backend` and register it in ``BACKENDS``; the
``backend`` fixture then runs every contract test against it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from catga import (
    InMemoryBroker,
    InMemoryIdempotencyStore,
    InMemoryTransport,
    InMemoryTransportOptions,
)
from catga.typing import Envelope, IdempotencyStore, Transport


class Backend:
    """One broker and store server, seen through as many clients as a test wants.

    Attributes:
        ack_wait: seconds before an unsettled delivery is redelivered (short, for speed).
        max_deliveries: deliveries before a message is dead-lettered.
        short: a lease or ttl, in seconds, that a test may wait to see expire.
    """

    ack_wait = 0.2
    max_deliveries = 3
    short = 0.05

    def __init__(self) -> None:
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def create(cls, request: pytest.FixtureRequest) -> Backend:
        """Make the backend for one test; a server backend asks for its server fixture here."""
        return cls()

    async def transport(self, *, connect: bool = True) -> Transport:
        """Return a new client of this backend's broker, like a second process."""
        transport = self._new_transport()
        self._closers.append(transport.aclose)
        if connect:
            await transport.connect()
        return transport

    async def store(self) -> IdempotencyStore:
        """Return an idempotency store client of this backend."""
        store = self._new_store()
        self._closers.append(store.aclose)
        return store

    async def aclose(self) -> None:
        """Close every client handed out, newest first."""
        for close in reversed(self._closers):
            await close()

    def _new_transport(self) -> Transport:
        raise NotImplementedError

    def _new_store(self) -> IdempotencyStore:
        raise NotImplementedError


class MemoryBackend(Backend):
    """The in-memory broker: transports sharing one :class:`InMemoryBroker`."""

    def __init__(self) -> None:
        super().__init__()
        self.broker = InMemoryBroker()
        self._store = InMemoryIdempotencyStore()
        self.options = InMemoryTransportOptions(
            ack_wait=self.ack_wait, max_deliveries=self.max_deliveries
        )

    def _new_transport(self) -> Transport:
        return InMemoryTransport(self.broker, options=self.options)

    def _new_store(self) -> IdempotencyStore:
        # One server: every client sees the same keys.
        return self._store

    async def aclose(self) -> None:
        await super().aclose()
        self.broker.close()


def _backends() -> dict[str, type[Backend]]:
    # Server backends live in their own modules and ask for their server fixture in
    # ``Backend.create``; imported here, late, because they subclass Backend.
    from . import backend_nats, backend_redis

    found: dict[str, type[Backend]] = {"memory": MemoryBackend}
    for name, module in (("redis", backend_redis), ("nats", backend_nats)):
        if module.BACKEND is not None:
            found[name] = module.BACKEND
    return found


BACKENDS = _backends()


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each backend in turn; closes every client it handed out."""
    instance = BACKENDS[request.param].create(request)
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
async def transport(backend: Backend) -> Transport:
    """A connected client of the backend."""
    return await backend.transport()


@pytest.fixture
async def store(backend: Backend) -> IdempotencyStore:
    """An idempotency store of the backend."""
    return await backend.store()


@pytest.fixture
def route() -> str:
    """A route no other test uses."""
    return f"test.{uuid.uuid4().hex}"


def envelope(message_id: str | None = None, *, body: bytes = b"{}", qos: int = 1) -> Envelope:
    """Build a test envelope, with a unique id unless one is given."""
    mid = f"m-{uuid.uuid4().hex}" if message_id is None else message_id
    return Envelope(message_id=mid, message_type="test.Ping", body=body, qos=qos)
