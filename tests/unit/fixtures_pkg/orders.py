"""Order handlers: an async function and a class."""

from __future__ import annotations

from attrs import frozen

from catga import Command, Event, handles


@frozen(kw_only=True)
class OrderPlaced(Event):
    """An order was placed."""

    order_id: str


@frozen(kw_only=True)
class CancelOrder(Command[bool]):
    """Cancel an order."""

    order_id: str


@handles(OrderPlaced)
async def on_order_placed(event: OrderPlaced) -> None:
    """React to a placed order."""


@handles(CancelOrder)
class CancelOrderHandler:
    """Cancels orders."""

    async def handle(self, command: CancelOrder) -> bool:
        """Cancel it."""
        return True


async def not_a_handler(event: OrderPlaced) -> None:
    """Unmarked: the scan must skip it."""
