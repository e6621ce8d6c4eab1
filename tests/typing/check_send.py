"""Type-checked by mypy (``[tool.mypy] files``) and run by ``tests/unit/test_typing.py``.

It proves the public signatures: ``await mediator.send(cmd)`` is ``R`` for a
``Command[R]``, and the wrong kind of message is a
type error. Each ``# type: ignore[code]`` marks a line mypy must reject: under
``strict`` an ignore that is not needed is itself an error (``warn_unused_ignores``),
so these lines fail the check if the signatures ever get looser.
"""

from __future__ import annotations

from decimal import Decimal
from typing import assert_type

from attrs import frozen

from catga import Command, Event, HandlerRegistry, Mediator, QoS, handles


@frozen(kw_only=True)
class PaymentResult:
    payment_id: str
    approved: bool


@frozen(kw_only=True)
class ProcessPayment(Command[PaymentResult]):
    payment_id: str
    amount: Decimal


@frozen(kw_only=True)
class CountItems(Command[int]):
    items: list[str]


@frozen(kw_only=True)
class OrderCreated(Event):
    order_id: str


@handles(ProcessPayment)
async def process_payment(command: ProcessPayment) -> PaymentResult:
    return PaymentResult(payment_id=command.payment_id, approved=command.amount > 0)


@handles(CountItems)
async def count_items(command: CountItems) -> int:
    return len(command.items)


@handles(OrderCreated)
async def on_order_created(event: OrderCreated) -> None:
    return None


def registry() -> HandlerRegistry:
    """The handlers above, for running this file."""
    return HandlerRegistry(process_payment, count_items, on_order_created)


async def check_send(mediator: Mediator) -> tuple[PaymentResult, int, list[int]]:
    """Send and publish with the types the signatures promise."""
    payment = await mediator.send(ProcessPayment(payment_id="pay-456", amount=Decimal("100")))
    assert_type(payment, PaymentResult)

    count = await mediator.send(CountItems(items=["a", "b"]), qos=QoS.EXACTLY_ONCE)
    assert_type(count, int)

    counts = await mediator.send_many([CountItems(items=["a"]), CountItems(items=[])])
    assert_type(counts, list[int])

    await mediator.publish(OrderCreated(order_id="order-123"))

    return payment, count, counts


async def check_misuse(mediator: Mediator) -> None:
    """Wrong uses that mypy must reject (never called)."""
    count = await mediator.send(CountItems(items=[]))
    wrong: str = count  # type: ignore[assignment]
    await mediator.send(OrderCreated(order_id="o"))  # type: ignore[arg-type]
    await mediator.publish(CountItems(items=[]))  # type: ignore[arg-type]
    del wrong
