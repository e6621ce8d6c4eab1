"""Billing handlers, one of them imported from another module."""

from __future__ import annotations

from attrs import frozen

from catga import Command, handles

from ..orders import CancelOrderHandler, on_order_placed

__all__ = ["CancelOrderHandler", "ChargeCard", "charge_card", "on_order_placed"]


@frozen(kw_only=True)
class ChargeCard(Command[str]):
    """Charge a card."""

    amount: int


@handles(ChargeCard)
async def charge_card(command: ChargeCard) -> str:
    """Charge it."""
    return f"charged {command.amount}"
