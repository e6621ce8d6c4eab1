"""What every subscription shares: a concurrency limit, handler tasks, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Coroutine
from typing import Any

import structlog

from catga.typing import Delivery, DeliveryHandler

__all__ = ["Backoff", "HandlerPool", "Slots"]

logger = structlog.get_logger(__name__)


class Slots:
    """A counting limit whose free slots can be taken several at a time."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._changed = asyncio.Event()

    async def wait(self) -> None:
        """Wait until at least one slot is free."""
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()

    def take(self, n: int) -> None:
        """Take ``n`` slots (the caller checked they are free)."""
        self.free -= n

    def give(self, n: int = 1) -> None:
        """Give ``n`` slots back."""
        self.free += n
        self._changed.set()


class HandlerPool:
    """Runs the delivery handler in tasks, one slot each; keeps every task referenced."""

    def __init__(self, route: str, handler: DeliveryHandler, concurrency: int) -> None:
        self.route = route
        self.handler = handler
        self.slots = Slots(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, delivery: Delivery) -> None:
        """Run the handler on ``delivery`` in a task; its slot was taken by the caller."""
        self._spawn(self._run(delivery))

    def start_call(self, work: Coroutine[Any, Any, None]) -> None:
        """Run other work in a slot (taken by the caller); its error is logged."""
        self._spawn(self._call(work))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            logger.exception("subscription work failed", route=self.route)
        finally:
            self.slots.give()

    async def wait(self) -> None:
        """Wait for every running handler (but not the calling task)."""
        running = self.tasks - {asyncio.current_task()}
        if running:
            await asyncio.wait(running)

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self.handler(delivery)
        except Exception:
            logger.exception(
                "delivery handler raised without settling; nacked",
                route=self.route,
                message_id=delivery.envelope.message_id,
                delivery_count=delivery.delivery_count,
            )
            try:
                await delivery.nack()
            except Exception as exc:  # noqa: BLE001 - left pending, it is reclaimed
                logger.warning("nack failed", route=self.route, error=repr(exc))
        finally:
            self.slots.give()


class Backoff:
    """Exponential backoff with full jitter, capped, for reconnect loops."""

    def __init__(self, cap: float, first: float = 0.05) -> None:
        self.cap, self.first = cap, first
        self.attempt = 0

    def reset(self) -> None:
        """Back to the first, short delay (after a success)."""
        self.attempt = 0

    def next_delay(self) -> float:
        """Return the next delay (and count the attempt)."""
        ceiling = min(self.cap, self.first * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return ceiling * (0.5 + random.random() / 2)

    async def sleep(self, stop: asyncio.Event | None = None) -> None:
        """Sleep for the next delay, or until ``stop`` is set."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
