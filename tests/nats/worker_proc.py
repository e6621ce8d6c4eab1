"""A consumer process for the fault tests, using catga's public API only.

Usage: python worker_proc.py URL PREFIX EFFECTS_FILE BLOCK

Handles ``Work`` (QoS 1) and ``WorkOnce`` (QoS 2) events; each handler appends
``start <id>`` to EFFECTS_FILE, then (BLOCK=1) prints BLOCKED and hangs so the test
can SIGKILL it mid-handler, or (BLOCK=0) appends ``effect <id>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import ClassVar

from attrs import frozen

from catga import CatgaOptions, Event, HandlerRegistry, IdempotencyOptions, Mediator, QoS, Worker
from catga import handles as handles_
from catga_nats import NatsConfig, NatsIdempotencyStore, NatsTransport


@frozen(kw_only=True)
class Work(Event):
    n: int


@frozen(kw_only=True)
class WorkOnce(Event):
    n: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


ROUTES = {Work: "work", WorkOnce: "work2"}


def config(url: str, prefix: str) -> NatsConfig:
    return NatsConfig(servers=url, prefix=prefix, ack_wait=1.0, fetch_timeout=0.25)


def options() -> CatgaOptions:
    return CatgaOptions(routes=ROUTES, idempotency=IdempotencyOptions(lease=1.0))


def write(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


async def main(url: str, prefix: str, effects: str, block: bool) -> None:
    async def run(event: Work | WorkOnce) -> None:
        write(effects, f"start {event.message_id}")
        if block:
            print("BLOCKED", flush=True)
            await asyncio.Event().wait()
        write(effects, f"effect {event.message_id}")

    @handles_(Work)
    async def work(event: Work) -> None:
        await run(event)

    @handles_(WorkOnce)
    async def work_once(event: WorkOnce) -> None:
        await run(event)

    cfg = config(url, prefix)
    async with NatsTransport(cfg) as transport:
        store = NatsIdempotencyStore(cfg)
        mediator = Mediator(
            HandlerRegistry(work, work_once), options=options(), transport=transport, store=store
        )
        async with Worker(mediator, keepalive=0.3):
            print("READY", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"))
