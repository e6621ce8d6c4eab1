"""The same handlers behind a transport: ``python -m samples.orders.routed``.

A "web" mediator routes ProcessPayment and OrderCreated to the in-memory broker; a
"worker" process (here a second mediator on the same broker) consumes them. Swap
InMemoryTransport for the Redis or NATS one and the two halves can run apart.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from dependency_injector import providers

from catga import CatgaOptions, HandlerRegistry, InMemoryBroker, InMemoryTransport, Worker

from .container import AppContainer
from .messages import OrderCreated, PageViewed, ProcessPayment

ROUTES = {ProcessPayment: "payments", OrderCreated: "orders"}


async def main() -> int:
    broker = InMemoryBroker()
    worker_side = AppContainer()
    worker_side.catga.options.override(providers.Object(CatgaOptions(routes=ROUTES)))
    worker_side.catga.transport.override(providers.Singleton(InMemoryTransport, broker))
    web_registry = HandlerRegistry()
    web_registry.add_types(ProcessPayment, OrderCreated, PageViewed)
    web_side = AppContainer()
    web_side.catga.options.override(providers.Object(CatgaOptions(routes=ROUTES)))
    web_side.catga.registry.override(providers.Object(web_registry))
    web_side.catga.transport.override(providers.Singleton(InMemoryTransport, broker))

    async with (
        worker_side.catga.transport() as _,
        web_side.catga.transport() as _,
        worker_side.catga.mediator() as consumer,
        web_side.catga.mediator() as web,
        Worker(consumer, concurrency=4),
    ):
        payment = ProcessPayment(message_id="pay-789", payment_id="pay-789", amount=Decimal("42"))
        results = await asyncio.gather(*(web.send(payment) for _ in range(3)))
        await web.publish(OrderCreated(order_id="order-456"))  # returns once stored
        async with asyncio.timeout(5):  # the worker handles it in the background
            while not worker_side.inventory().reserved:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.01)
        print(f"3 remote sends of pay-789 -> {results[0]}; all equal: {len(set(results)) == 1}")
        print(f"card charged {len(worker_side.payments().charges)} time(s)")
    print(f"stock reserved for: {worker_side.inventory().reserved}")
    return 0 if len(worker_side.payments().charges) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
