"""A producer process of the fault scenarios, on catga's public API only.

``python -m tests.faults.producer BACKEND URL PREFIX LEDGER --count N --rate R [--qos 0,1,2]``

Publishes ``N`` events per QoS level, interleaved, ``R`` per second in all, with ids
``{run}-q{qos}-{i}``. Every publish attempt is written to the ledger: ``acked`` when
``publish`` returned, ``indeterminate`` when it raised or did not return within
``PUBLISH_TIMEOUT`` (the broker may have it or not). A failed publish is retried
with the same message id (what a real producer does) until a deadline; QoS 0 is never
retried.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from catga import HandlerRegistry, Mediator

from . import app
from .ledger import Writer


async def publish_until_acked(
    mediator: Mediator, ledger: Writer, qos: int, i: int, run: str, give_up: float
) -> None:
    message_id = f"{run}-q{qos}-{i:07d}"
    event = app.TYPES[qos](message_id=message_id, n=i)  # type: ignore[call-arg]
    delay = 0.05
    while True:
        try:
            async with asyncio.timeout(app.PUBLISH_TIMEOUT * 2):
                await mediator.publish(event)
        except Exception as exc:
            ledger.sent(message_id, qos, "indeterminate", repr(exc)[:200])
            if qos == 0 or time.monotonic() > give_up:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        else:
            ledger.sent(message_id, qos, "acked")
            return


async def main(args: argparse.Namespace) -> None:
    ledger = Writer(args.ledger, "producer", os.getpid())
    levels = [int(q) for q in args.qos.split(",")]
    transport, _ = await app.open_backend(args.backend, args.url, args.prefix, with_store=False)
    registry = HandlerRegistry()
    registry.add_types(*app.TYPES.values())
    mediator = Mediator(registry, options=app.options(), transport=transport)
    jobs = [(qos, i) for i in range(args.count) for qos in levels]
    slots = asyncio.Semaphore(args.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    give_up = start + args.give_up
    for k, (qos, i) in enumerate(jobs):
        due = start + k / args.rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)  # pacing, so faults land mid-run
        await slots.acquire()
        task = asyncio.create_task(publish_until_acked(mediator, ledger, qos, i, args.run, give_up))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
    while tasks:
        await asyncio.gather(*tasks)
    ledger.proc("done")
    await mediator.aclose()
    await transport.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["redis", "nats"])
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("ledger")
    parser.add_argument("--run", default="m")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--qos", default="0,1,2")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--give-up", type=float, default=120.0)
    asyncio.run(main(parser.parse_args()))
