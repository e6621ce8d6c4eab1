"""Run the orders sample on the in-memory backend: ``python -m samples.orders``."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from .container import AppContainer
from .messages import OrderCreated, PageViewed, ProcessPayment


async def main() -> int:
    container = AppContainer()
    async with container.catga.mediator() as mediator:
        print("QoS 2 - ProcessPayment pay-456 sent twice, then 5 times at once:")
        payment = ProcessPayment(message_id="pay-456", payment_id="pay-456", amount=Decimal("100"))
        first = await mediator.send(payment)
        again = await mediator.send(
            ProcessPayment(message_id="pay-456", payment_id="pay-456", amount=Decimal("100"))
        )
        burst = await asyncio.gather(*(mediator.send(payment) for _ in range(5)))
        charges = container.payments().charges
        print(f"  first result:  {first}")
        print(f"  second result: {again}")
        print(f"  all 7 results equal: {all(r == first for r in (again, *burst))}")
        print(f"  card charged {len(charges)} time(s): {charges}")

        print("QoS 1 - OrderCreated order-123 to two handlers, the mailer fails once:")
        await mediator.publish(OrderCreated(order_id="order-123"))
        mailer = container.mailer()
        print(f"  stock reserved for: {container.inventory().reserved}")
        print(f"  mail attempts: {mailer.attempts}, sent: {mailer.sent}")

        print("QoS 0 - PageViewed: publish returns at once, the handler runs in the background")
        await mediator.publish(PageViewed(page="/checkout"))
        print(f"  views recorded right after publish: {container.analytics().views}")
    print(f"  views recorded after the mediator closed: {container.analytics().views}")
    print(f"dead letters: {len(mediator.dead_letters)}")
    ok = len(charges) == 1 and mailer.sent and container.analytics().views == ["/checkout"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
