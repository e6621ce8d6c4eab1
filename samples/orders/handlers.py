"""The sample's handlers; parameters after the message are injected from the container."""

from __future__ import annotations

from catga import handles

from .messages import OrderCreated, PageViewed, PaymentResult, ProcessPayment
from .services import Analytics, Inventory, Mailer, PaymentGateway


@handles(ProcessPayment)
async def process_payment(cmd: ProcessPayment, payments: PaymentGateway) -> PaymentResult:
    number = await payments.charge(cmd.payment_id, cmd.amount)
    return PaymentResult(payment_id=cmd.payment_id, charged=cmd.amount, charge_number=number)


@handles(OrderCreated)
async def reserve_stock(event: OrderCreated, inventory: Inventory, uow: list[str]) -> None:
    inventory.reserved.append(event.order_id)
    uow.append(f"reserve {event.order_id}")


@handles(OrderCreated)
class SendConfirmation:
    """A class handler: its constructor arguments are injected too."""

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    async def handle(self, event: OrderCreated) -> None:
        await self.mailer.send("customer@example.com", f"order {event.order_id} confirmed")


@handles(PageViewed)
async def record_view(event: PageViewed, analytics: Analytics) -> None:
    analytics.views.append(event.page)
