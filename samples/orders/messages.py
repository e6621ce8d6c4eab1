"""The sample's messages: each type states its quality of service."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from attrs import frozen

from catga import Command, Event, QoS


@frozen(kw_only=True)
class PaymentResult:
    """What charging a payment returns."""

    payment_id: str
    charged: Decimal
    charge_number: int


@frozen(kw_only=True)
class ProcessPayment(Command[PaymentResult]):
    """Charge a card: must happen exactly once per payment id."""

    payment_id: str
    amount: Decimal
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class OrderCreated(Event):
    """An order was placed: every interested handler must see it at least once."""

    order_id: str
    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class PageViewed(Event):
    """A log-style event: losing one is fine, waiting for it is not."""

    page: str
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE
