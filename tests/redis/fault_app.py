"""The application of the fault tests: message types and handlers that count effects in Redis.

Imported by the test and by ``consumer_proc`` (a separate process), so both name the
messages the same. Effects are counted with ``INCR`` on keys of their own, outside
catga's keys, so the test can see what handlers did even after a process died.
"""

from __future__ import annotations

import asyncio
import os
from typing import ClassVar

from attrs import frozen
from redis.asyncio import Redis

from catga import Command, Event, HandlerRegistry, QoS, handles


@frozen(kw_only=True)
class Job(Event):
    """A QoS 1 event: each handling counts one effect."""

    n: int


@frozen(kw_only=True)
class Pay(Command[str]):
    """A QoS 2 command: its effect must be committed once per message_id."""

    amount: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Settle(Command[int]):
    """A slow QoS 2 command, so that duplicates meet while it runs."""

    amount: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


@frozen(kw_only=True)
class Credit(Event):
    """A slow QoS 2 event, so that duplicates meet while it runs."""

    amount: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


ROUTES = {Job: "jobs", Pay: "pays", Settle: "settles", Credit: "credits"}


def registry(effects: Redis, prefix: str, *, hang: bool = False) -> HandlerRegistry:
    """The handlers; with ``hang`` they announce they started and never finish."""

    async def maybe_hang(message_id: str) -> None:
        if hang:
            await effects.set(f"{prefix}:started:{message_id}", os.getpid())
            await asyncio.Event().wait()

    @handles(Job)
    async def job(event: Job) -> None:
        await effects.incr(f"{prefix}:effects:{event.message_id}")
        await maybe_hang(event.message_id)

    @handles(Pay)
    async def pay(cmd: Pay) -> str:
        await maybe_hang(cmd.message_id)
        await effects.incr(f"{prefix}:effects:{cmd.message_id}")
        return f"paid {cmd.amount} by {os.getpid()}"

    @handles(Settle)
    async def settle(cmd: Settle) -> int:
        await asyncio.sleep(0.1)  # long enough for the duplicates to meet
        return int(await effects.incr(f"{prefix}:effects:{cmd.message_id}"))

    @handles(Credit)
    async def credit(event: Credit) -> None:
        await asyncio.sleep(1.0)  # long enough for a duplicate to use up its attempts
        await effects.incr(f"{prefix}:effects:{event.message_id}")

    return HandlerRegistry(job, pay, settle, credit)
