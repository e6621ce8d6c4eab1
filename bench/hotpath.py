"""A bare loop of ``send`` or ``publish`` for profilers (no timing, no output).

``python -m cProfile -s tottime -m bench.hotpath --qos 2 --calls 300000`` shows where a
QoS 2 send spends its time; ``--qos 1``, ``--publish 3`` (fan-out) likewise. QoS 2 runs
on a store already filled to its bound (the steady state), with new ids.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from catga import InMemoryIdempotencyStore, Mediator, Message

from ._fixtures import Ping0, Ping1, Ping2, Tick1, Tick1x3, registry

__all__ = ["run"]


async def run(qos: int, calls: int, publish: int, prefill: int) -> None:
    """Send (or publish to ``publish`` handlers) ``calls`` messages at ``qos``."""
    mediator = Mediator(registry(), store=InMemoryIdempotencyStore(max_entries=prefill or 1))
    dispatch: Any
    cls: type[Message]
    if publish:
        cls, dispatch = (Tick1 if publish == 1 else Tick1x3), mediator.publish
    else:
        cls, dispatch = (Ping0, Ping1, Ping2)[qos], mediator.send
    if qos == 2:
        for _ in range(prefill):
            await mediator.send(Ping2())
    same = cls()
    for _ in range(calls):
        await dispatch(cls() if qos == 2 else same)
    await mediator.aclose()


def main() -> None:
    """Parse the command line and run the loop."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument(
        "--publish",
        type=int,
        choices=(0, 1, 3),
        default=0,
        help="publish an event with this many handlers (QoS 1) instead of send",
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=100_000,
        help="QoS 2: fill the store to this bound (its max_entries) first",
    )
    args = parser.parse_args()
    asyncio.run(run(args.qos, args.calls, args.publish, args.prefill))


if __name__ == "__main__":
    main()
