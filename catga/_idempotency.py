"""Exactly-once in the pipeline: a claim in the idempotency store around the handler."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from ._options import IdempotencyOptions
from .exceptions import InProgressError
from .typing import Acquired, Done, IdempotencyStore, Next, Serializer

__all__ = ["IdempotencyBehavior"]

logger = structlog.get_logger("catga")

_POLL_FIRST, _POLL_MAX = 0.005, 0.5


class IdempotencyBehavior:
    """Runs the handler at most once per key and answers duplicates with the stored result.

    The key is ``prefix:message_id``; the prefix is the command's name, or the event
    handler's name (so each event handler runs once per event). Duplicates in this
    process wait for the running attempt and share its outcome; duplicates from
    elsewhere poll the store, or, for a delivery from a broker, raise
    :class:`InProgressError` at once so the worker redelivers later. A failed attempt
    releases the key: it does not poison the id.

    Args:
        prefix: the key's prefix.
        result_type: the type stored results decode into.
        store: where claims and results live.
        serializer: encodes results for the store.
        options: lease, retention and how long a duplicate waits.
        keeper: the lease keeper shared by a mediator's chains.
    """

    def __init__(
        self,
        *,
        prefix: str,
        result_type: Any,
        store: IdempotencyStore,
        serializer: Serializer,
        options: IdempotencyOptions,
        keeper: LeaseKeeper,
    ) -> None:
        self.prefix = prefix
        self.result_type = result_type
        self.store = store
        self.serializer = serializer
        self.options = options
        self.keeper = keeper
        self._running: dict[str, list[asyncio.Future[Any]] | None] = {}

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        key = f"{self.prefix}:{message.message_id}"
        if key in self._running:
            return await self._join(key, message, ctx, next)
        claim = await self.store.claim(key, self.options.lease)
        if type(claim) is Acquired:
            return await self._run(key, claim.token, message, ctx, next)
        if type(claim) is Done:
            return self.serializer.decode(claim.result, self.result_type)
        if ctx.delivery is not None:
            raise InProgressError(key)
        return await self._await_other(key, message, ctx, next)

    async def _run(self, key: str, token: str, message: Any, ctx: Any, next: Next) -> Any:
        # Duplicates arriving meanwhile append futures here (the list is made only then).
        self._running[key] = None
        self.keeper.hold(key, token)
        try:
            result = await next(message, ctx)
            encoded = self.serializer.encode(result)
            if not await self.store.complete(key, token, encoded, self.options.retention):
                result = await self._after_refused_commit(key)
        except BaseException as exc:
            # Duplicates first: nothing below may leave them waiting. A cancelled caller
            # must not cancel its duplicates: they claim again.
            outcome = _OwnerCancelledError() if isinstance(exc, asyncio.CancelledError) else exc
            _settle(self._running.pop(key), exc=outcome)
            await self._release(key, token)
            raise
        finally:
            self.keeper.drop(key)
        _settle(self._running.pop(key), result=result)
        return result

    async def _release(self, key: str, token: str) -> None:
        try:
            await self.store.release(key, token)
        except Exception as exc:  # noqa: BLE001 - the attempt's own error is the one to raise
            logger.warning("release failed; the lease will expire", key=key, error=repr(exc))

    async def _after_refused_commit(self, key: str) -> Any:
        """Our lease was lost before the commit: the id's result is another attempt's.

        Return that result if it is stored; otherwise raise :class:`InProgressError`,
        so a worker does not ack (the redelivery is answered from the store) and an
        in-process caller is not told the effect was committed.
        """
        logger.error("idempotency commit refused: lease lost", key=key)
        claim = await self.store.claim(key, self.options.lease)
        if type(claim) is Done:
            return self.serializer.decode(claim.result, self.result_type)
        if type(claim) is Acquired:
            await self.store.release(key, claim.token)
        raise InProgressError(key)

    async def _join(self, key: str, message: Any, ctx: Any, next: Next) -> Any:
        """Wait for the attempt running in this process and share its outcome."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters = self._running[key]
        if waiters is None:
            waiters = self._running[key] = []
        waiters.append(future)
        try:
            return await future
        except _OwnerCancelledError:
            return await self(message, ctx, next)

    async def _await_other(self, key: str, message: Any, ctx: Any, next: Next) -> Any:
        """Poll the store until the other attempt completes, or its lease ends and we take over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.wait_for_duplicate
        delay = _POLL_FIRST
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            claim = await self.store.claim(key, self.options.lease)
            if isinstance(claim, Done):
                return self.serializer.decode(claim.result, self.result_type)
            if isinstance(claim, Acquired):
                return await self._run(key, claim.token, message, ctx, next)
        raise InProgressError(key)


class _OwnerCancelledError(Exception):
    """The attempt a duplicate joined was cancelled; the duplicate claims again."""


def _settle(
    waiters: list[asyncio.Future[Any]] | None,
    *,
    result: Any = None,
    exc: BaseException | None = None,
) -> None:
    for future in waiters or ():
        if future.done():
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


class LeaseKeeper:
    """Renews the leases of running attempts from one background task per mediator.

    Holding a lease costs a dict insert; the task wakes every third of a lease and
    renews those held longer than that, so short handlers never cause a store call.
    """

    def __init__(self, store: IdempotencyStore, lease: float) -> None:
        self.store = store
        self.lease = lease
        self._held: dict[str, tuple[str, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, key: str, token: str) -> None:
        """Start renewing ``key`` while it is held."""
        self._held[key] = (token, time.monotonic())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._renew(), name="catga-lease-keeper"
            )

    def drop(self, key: str) -> None:
        """Stop renewing ``key``."""
        self._held.pop(key, None)

    async def _renew(self) -> None:
        try:
            await self._renew_held()
        finally:
            self._task = None

    async def _renew_held(self) -> None:
        period = self.lease / 3
        while self._held:
            await asyncio.sleep(period)
            now = time.monotonic()
            for key, (token, since) in list(self._held.items()):
                if now - since < period or key not in self._held:
                    continue
                try:
                    renewed = await self.store.extend(key, token, self.lease)
                except Exception as exc:  # noqa: BLE001 - a store hiccup must not kill the keeper
                    logger.warning("lease renewal failed", key=key, error=repr(exc))
                    continue
                if not renewed:
                    logger.error("idempotency lease lost while the handler runs", key=key)
                    self._held.pop(key, None)

    async def aclose(self) -> None:
        """Stop the renewal task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
