"""The extension points of catga, as typed protocols, and the values they exchange.

Implement these to add a backend (``Transport``, ``IdempotencyStore``), a wire
format (``Serializer``) or a pipeline step (``Behavior``). Every backend must
pass ``tests/contract/``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, Self, TypeAlias, TypeVar, runtime_checkable

import msgspec
from attrs import frozen

from ._qos import QoS

__all__ = [
    "Acquired",
    "Behavior",
    "ClaimResult",
    "DeadLetter",
    "Delivery",
    "DeliveryHandler",
    "Done",
    "Envelope",
    "IdempotencyStore",
    "InProgress",
    "Next",
    "Serializer",
    "Subscription",
    "Transport",
]

T = TypeVar("T")


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """A message on the wire: metadata plus the encoded payload.

    ``headers`` carries transport-neutral extras; a reply to a failed remote command
    sets ``error_type`` and ``error_message`` instead of a body.
    """

    message_id: str
    message_type: str
    body: bytes
    qos: int = 1
    correlation_id: str | None = None
    created_at: float = 0.0
    reply_to: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


# Pipeline -----------------------------------------------------------------

Next: TypeAlias = Callable[[Any, Any], Awaitable[Any]]
"""The rest of the chain: ``await next(message, ctx)`` runs it and returns the result."""


@runtime_checkable
class Behavior(Protocol):
    """A pipeline step wrapped around every handler call of the message types it applies to.

    It must call ``await next(message, ctx)`` at most once per attempt and return its
    result (or a replacement); raising fails the dispatch.
    """

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any: ...


# Idempotency --------------------------------------------------------------


# Claim results are msgspec Structs: created on every QoS 2 dispatch, they cost
# a fifth of an attrs frozen class to make.
class Acquired(msgspec.Struct, frozen=True):
    """The caller now owns the key until the lease ends; ``token`` proves it."""

    token: str


class InProgress(msgspec.Struct, frozen=True):
    """Another attempt holds the lease."""


class Done(msgspec.Struct, frozen=True):
    """The key was completed; ``result`` is the stored, encoded result."""

    result: bytes


ClaimResult: TypeAlias = Acquired | InProgress | Done


@runtime_checkable
class IdempotencyStore(Protocol):
    """Remembers, per key, that a handler ran and what it returned.

    Every operation that changes a claimed key is owner-checked with the token from
    :class:`Acquired`; a stale owner (its lease expired and another took over) is refused.
    """

    async def claim(self, key: str, lease: float) -> ClaimResult:
        """Take the key for ``lease`` seconds, or report it busy or done."""
        ...

    async def extend(self, key: str, token: str, lease: float) -> bool:
        """Renew a held lease; ``False`` when the token no longer owns the key."""
        ...

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Mark the key done with its result, kept ``ttl`` seconds; ``False`` if not the owner."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Give the key up after a failed attempt so a later one may run (owner-checked)."""
        ...

    async def aclose(self) -> None:
        """Free connections; idempotent."""
        ...


# Transport ----------------------------------------------------------------


@frozen
class DeadLetter:
    """A message a consumer gave up on, with why."""

    id: str
    route: str
    envelope: Envelope
    reason: str
    delivery_count: int
    dead_lettered_at: float


@runtime_checkable
class Delivery(Protocol):
    """One delivery of an envelope to a subscriber; settle it exactly once.

    ``delivery_count`` is 1 on the first delivery and grows with each redelivery.
    At QoS 0 settling is a no-op.
    """

    @property
    def envelope(self) -> Envelope: ...

    @property
    def delivery_count(self) -> int: ...

    async def ack(self) -> None:
        """Done: never deliver it again."""
        ...

    async def nack(self, delay: float = 0.0) -> None:
        """Failed: deliver it again after ``delay`` seconds."""
        ...

    async def dead_letter(self, reason: str) -> None:
        """Give up: move it to the route's dead-letter queue with ``reason``, and ack it."""
        ...

    async def in_progress(self) -> None:
        """Still working: push back the redelivery deadline."""
        ...


DeliveryHandler: TypeAlias = Callable[[Delivery], Awaitable[None]]


@runtime_checkable
class Subscription(Protocol):
    """A running consumer of one route."""

    @property
    def route(self) -> str: ...

    async def aclose(self) -> None:
        """Stop taking new deliveries, wait for those in flight, then stop; idempotent."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Moves envelopes between processes.

    QoS picks the primitive: 0 is fire-and-forget (nothing stored, nobody listening
    is not an error); 1 is durable (``publish`` returns once the broker stored it);
    2 is durable with producer-side dedup on ``message_id``.
    """

    async def connect(self) -> None:
        """Open connections; must be called before anything else."""
        ...

    async def aclose(self) -> None:
        """Close subscriptions and connections; idempotent."""
        ...

    async def __aenter__(self) -> Self:
        """``connect()``, then return the transport."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """``aclose()``."""
        ...

    async def publish(self, route: str, envelope: Envelope, *, qos: QoS) -> None:
        """Hand an envelope to the route; at QoS >= 1 return once it is stored."""
        ...

    async def publish_many(self, route: str, envelopes: Sequence[Envelope], *, qos: QoS) -> None:
        """Publish several envelopes at once (one round trip where the backend can)."""
        ...

    async def request(self, route: str, envelope: Envelope, *, timeout: float) -> Envelope:
        """Publish durably with a reply address and wait for the reply envelope.

        Raises:
            RequestTimeoutError: no reply in ``timeout`` seconds.
        """
        ...

    async def reply(self, request: Envelope, reply: Envelope) -> None:
        """Send ``reply`` to ``request.reply_to``; a reply nobody waits for is dropped."""
        ...

    async def subscribe(
        self,
        route: str,
        handler: DeliveryHandler,
        *,
        group: str,
        qos: QoS,
        concurrency: int = 16,
    ) -> Subscription:
        """Start consuming a route; consumers sharing ``group`` compete for messages.

        QoS 0 subscribes to the fire-and-forget channel, QoS >= 1 to the durable one.
        """
        ...

    async def dead_letters(self, route: str, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of a route, oldest first."""
        ...


@runtime_checkable
class Serializer(Protocol):
    """Turns payloads and envelopes into bytes and back. Never pickle."""

    def encode(self, value: Any) -> bytes:
        """Encode a message or a result.

        Raises:
            SerializationError: the value cannot be encoded.
        """
        ...

    def decode(self, data: bytes, type_: type[T]) -> T:
        """Decode bytes into ``type_``.

        Raises:
            SerializationError: malformed bytes or a shape that does not fit ``type_``.
        """
        ...

    def encode_envelope(self, envelope: Envelope) -> bytes:
        """Encode a whole envelope, for transports that carry one blob."""
        ...

    def decode_envelope(self, data: bytes) -> Envelope:
        """Decode a whole envelope.

        Raises:
            SerializationError: malformed bytes.
        """
        ...
