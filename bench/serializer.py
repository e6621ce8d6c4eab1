"""Serializer choice: an encode + decode round trip of a typical attrs command.

``catga.JsonSerializer`` (msgspec, the default) against cattrs + orjson
(``cattrs.preconf.orjson.make_converter()``, with a ``Decimal`` hook since
JSON has no decimal type). Part of ``python -m bench``; alone:
``python -m bench.serializer [--quick]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar

import msgspec
from attrs import frozen

from catga import Command, JsonSerializer, QoS

from ._harness import Budget, Row, make_row, measure_sync, progress, render_rows

__all__ = ["PlaceOrder", "rows", "sample"]


@frozen(kw_only=True)
class LineItem:
    """One line of an order."""

    sku: str
    quantity: int
    unit_price: Decimal


@frozen(kw_only=True)
class Address:
    """Where an order goes."""

    street: str
    city: str
    postcode: str
    country: str


@frozen(kw_only=True)
class PlaceOrder(Command[str]):
    """A typical command: str, Decimal, int, a nested attrs class and a list of them."""

    order_id: str
    customer_id: str
    total: Decimal
    priority: int
    shipping: Address
    items: list[LineItem]
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


def sample() -> PlaceOrder:
    """Return the command that every serializer round-trips."""
    items = [
        LineItem(sku=f"SKU-{i:05d}", quantity=i + 1, unit_price=Decimal(f"{9 + i}.99"))
        for i in range(3)
    ]
    return PlaceOrder(
        order_id="order-123",
        customer_id="customer-42",
        total=sum((item.unit_price * item.quantity for item in items), Decimal(0)),
        priority=2,
        shipping=Address(street="1 Main St", city="Springfield", postcode="12345", country="US"),
        items=items,
        correlation_id="conversation-7",
    )


def _catga() -> Callable[[PlaceOrder], PlaceOrder]:
    serializer = JsonSerializer()
    encode, decode = serializer.encode, serializer.decode
    return lambda value: decode(encode(value), PlaceOrder)


def _msgspec_raw() -> Callable[[PlaceOrder], PlaceOrder]:
    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder(PlaceOrder).decode
    return lambda value: decode(encode(value))


def _cattrs_orjson() -> Callable[[PlaceOrder], PlaceOrder]:
    import orjson
    from cattrs.preconf.orjson import make_converter

    converter = make_converter()
    converter.register_unstructure_hook(Decimal, str)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))
    unstructure, structure = converter.unstructure, converter.structure
    dumps, loads = orjson.dumps, orjson.loads
    return lambda value: structure(loads(dumps(unstructure(value))), PlaceOrder)


def _loop(round_trip: Callable[[PlaceOrder], Any], value: PlaceOrder) -> Callable[[int], int]:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(n):
            round_trip(value)
        return time.perf_counter_ns() - start

    return run


def rows(budget: Budget) -> list[Row]:
    """Time one round trip per serializer; each must give back an equal command."""
    progress("serializer: msgspec vs cattrs+orjson round trips")
    value = sample()
    cases = [
        ("catga.JsonSerializer (msgspec)", _catga(), "the default serializer"),
        ("msgspec, bare Encoder/Decoder", _msgspec_raw(), "without JsonSerializer's wrapper"),
        ("cattrs + orjson", _cattrs_orjson(), "converter from cattrs.preconf.orjson"),
    ]
    result = []
    for impl, round_trip, note in cases:
        if round_trip(value) != value:
            raise AssertionError(f"{impl} does not round-trip {value!r}")
        samples = measure_sync(_loop(round_trip, value), budget)
        result.append(make_row("serializer", "encode + decode a command", impl, None, samples,
                               budget, note))  # fmt: skip
    ours = result[0]["ns_per_call"]
    result[2]["note"] += f"; {result[2]['ns_per_call'] / ours:.1f}x catga.JsonSerializer"
    return result


def main() -> None:
    """Print the serializer rows as a table."""
    quick = "--quick" in sys.argv[1:]
    print(render_rows(rows(Budget(calls=10_000 if quick else 100_000))))


if __name__ == "__main__":
    main()
