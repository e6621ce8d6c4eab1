"""Hypothesis strategies for messages, envelopes and handler registrations.

Every type here is defined at module level: attrs and msgspec need importable
classes to resolve annotations.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from attrs import frozen
from hypothesis import strategies as st

from catga import Command, Event, handles
from catga.typing import Envelope

__all__ = [
    "EVENT_TYPES",
    "HANDLERS",
    "Address",
    "EventSink",
    "Kitchen",
    "Quote",
    "datetimes",
    "envelopes",
    "handler_batches",
    "kitchens",
    "quotes",
]


@frozen(kw_only=True)
class Address:
    """A nested attrs value (not a message)."""

    street: str
    number: int
    tags: list[str]


@frozen(kw_only=True)
class Kitchen(Event):
    """An event with one field of every JSON-friendly type catga promises."""

    text: str
    count: int
    ratio: float
    flag: bool
    amount: Decimal
    at: datetime
    tags: list[str]
    scores: dict[str, int]
    note: str | None
    address: Address
    history: list[Address]
    extra: dict[str, Any]


@frozen(kw_only=True)
class Quote(Command[Address]):
    """A command whose result is an attrs class."""

    amounts: list[Decimal]
    address: Address | None


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=20)

# JSON carries UTC offsets to the minute: second-level offsets (historic local mean
# times) are truncated by msgspec, so they are left out of the round-trip property.
_offsets = st.integers(min_value=-1439, max_value=1439).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
datetimes = st.datetimes(timezones=st.none() | _offsets)

json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)

addresses = st.builds(Address, street=texts, number=st.integers(), tags=st.lists(texts, max_size=3))

_message_fields: dict[str, Any] = {
    "message_id": st.text(min_size=1, max_size=30),
    "correlation_id": st.none() | texts,
    "created_at": finite_floats,
}

kitchens = st.builds(
    Kitchen,
    text=st.text(),
    count=st.integers(),
    ratio=finite_floats,
    flag=st.booleans(),
    amount=st.decimals(allow_nan=False, allow_infinity=False),
    at=datetimes,
    tags=st.lists(texts, max_size=5),
    scores=st.dictionaries(texts, st.integers(), max_size=5),
    note=st.none() | texts,
    address=addresses,
    history=st.lists(addresses, max_size=3),
    extra=st.dictionaries(texts, json_values, max_size=3),
    **_message_fields,
)

quotes = st.builds(
    Quote,
    amounts=st.lists(st.decimals(allow_nan=False, allow_infinity=False), max_size=4),
    address=st.none() | addresses,
    **_message_fields,
)

envelopes = st.builds(
    Envelope,
    message_id=st.text(min_size=1),
    message_type=st.text(min_size=1),
    body=st.binary(),
    qos=st.integers(min_value=0, max_value=2),
    correlation_id=st.none() | st.text(),
    created_at=finite_floats,
    reply_to=st.none() | st.text(),
    error_type=st.none() | st.text(),
    error_message=st.none() | st.text(),
    headers=st.dictionaries(st.text(), st.text(), max_size=4),
)


# Registrations ---------------------------------------------------------------


@frozen(kw_only=True)
class Ping(Event):
    """A pool event type."""


@frozen(kw_only=True)
class Pong(Event):
    """A pool event type."""


@frozen(kw_only=True)
class Tick(Event):
    """A pool event type."""


EVENT_TYPES: tuple[type[Event], ...] = (Ping, Pong, Tick)


def _function_handler(index: int, *types: type[Event]) -> Any:
    @handles(*types)
    async def handler(event: Event) -> None:
        return None

    handler.__qualname__ = handler.__name__ = f"handler_{index}"
    return handler


@handles(Ping, Tick)
class EventSink:
    """An instance handler: each instance is a distinct handler."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def handle(self, event: Event) -> None:
        """Do nothing."""

    def __repr__(self) -> str:
        return f"EventSink({self.label!r})"


HANDLERS: tuple[Any, ...] = (
    _function_handler(0, Ping),
    _function_handler(1, Pong),
    _function_handler(2, Tick),
    _function_handler(3, Ping, Pong),
    _function_handler(4, Ping, Pong, Tick),
    _function_handler(5, Tick, Ping),
    EventSink("a"),
    EventSink("b"),
)

# Batches of handlers passed to one ``register`` call each; repeats are allowed
# (registering a handler twice is a no-op).
handler_batches = st.lists(st.lists(st.sampled_from(HANDLERS), max_size=5), max_size=5)
