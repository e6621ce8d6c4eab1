"""QoS >= 1 consumption: a consumer-group reader per subscription, settled with Lua.

One loop per subscription reads new entries (``XREADGROUP >``, never more than free
slots), takes over idle ones (``XAUTOCLAIM`` in a script that also reads their
delivery counts and dead-letters those past ``max_deliveries``) and trims the stream
below what any group still needs. ``nack(delay)`` leaves the entry pending and sets
its idle time so that it becomes claimable after ``delay``: the entry never leaves
the pending list, so no crash between two steps can lose it, and Redis's own
delivery counter keeps counting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from catga.exceptions import SerializationError
from catga.typing import DeliveryHandler, Envelope

from . import _codec
from ._config import RedisConfig
from ._runner import Backoff, HandlerPool
from ._scripts import Scripts
from .exceptions import map_redis_errors

__all__ = ["StreamSubscription", "ensure_group"]

logger = structlog.get_logger(__name__)


async def ensure_group(client: Redis, key: str, group: str) -> None:
    """Create the group at the start of the stream (and the stream); an existing one is fine."""
    with map_redis_errors(what=f"XGROUP CREATE {key} {group}"):
        try:
            await client.xgroup_create(key, group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class StreamDelivery:
    """One delivery of a stream entry; the first settle counts, later ones do nothing."""

    __slots__ = ("_settled", "_sub", "delivery_count", "entry_id", "envelope")

    def __init__(self, sub: StreamSubscription, entry_id: str, envelope: Envelope, count: int):
        self._sub = sub
        self.entry_id = entry_id
        self.envelope = envelope
        self.delivery_count = count
        self._settled = False

    async def ack(self) -> None:
        """``XACK``, batched with the subscription's other acks into one command."""
        if not self._settled:
            self._settled = True
            await self._sub.acker.ack(self.entry_id)

    async def nack(self, delay: float = 0.0) -> None:
        """Leave it pending, claimable again after ``delay`` (at most ``claim_idle``)."""
        if not self._settled:
            self._settled = True
            await self._sub.nack(self, delay)

    async def dead_letter(self, reason: str) -> None:
        """Copy it to the dead-letter stream with ``reason`` and ack it, in one script."""
        if not self._settled:
            self._settled = True
            await self._sub.dead_letter(self.entry_id, self.delivery_count, reason)

    async def in_progress(self) -> None:
        """Reset its idle time, so nobody takes it over yet."""
        if not self._settled:
            await self._sub.touch(self, idle_ms=0)


class Acker:
    """Acks of one subscription, sent together: one ``XACK`` per batch that piled up.

    While one ``XACK`` is in flight the next acks wait and go in the next one, so an
    idle consumer acks at once and a busy one acks many entries per round trip. A
    failed ``XACK`` (Redis restarting) is retried until ``give_up`` seconds passed;
    after that the entries stay pending and are reclaimed.
    """

    def __init__(self, client: Redis, key: str, group: str, give_up: float, cap: float) -> None:
        self._client, self._key, self._group = client, key, group
        self._give_up, self._cap = give_up, cap
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def ack(self, entry_id: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((entry_id, future))
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name=f"catga-redis-ack:{self._key}")
        # A cancelled caller cancels only its wait: the ack is in the batch and still goes.
        await future

    async def aclose(self) -> None:
        """Wait for the acks in flight."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._xack([entry_id for entry_id, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every waiting ack
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._task = None

    async def _xack(self, ids: list[str]) -> None:
        deadline = time.monotonic() + self._give_up
        backoff = Backoff(self._cap)
        while True:
            try:
                with map_redis_errors(what="XACK"):
                    await self._client.xack(self._key, self._group, *ids)
                return
            except (ConnectionError, TimeoutError) as exc:  # RedisConnection/TimeoutError
                if time.monotonic() > deadline:
                    raise
                logger.warning("XACK failed; retrying", stream=self._key, error=repr(exc))
            await backoff.sleep()


class StreamSubscription:
    """A consumer of one stream in one group; see the module docstring."""

    def __init__(
        self,
        *,
        client: Redis,
        scripts: Scripts,
        config: RedisConfig,
        route: str,
        group: str,
        consumer: str,
        handler: DeliveryHandler,
        concurrency: int,
        on_close: Callable[[Any], None],
    ) -> None:
        self._client, self._scripts, self._config = client, scripts, config
        self._route, self._group, self._consumer = route, group, consumer
        self._key = f"{config.prefix}:{route}"
        self._dlq = f"{self._key}:dlq"
        self._on_close = on_close
        self._pool = HandlerPool(route, handler, concurrency)
        self.acker = Acker(client, self._key, group, config.claim_idle, config.reconnect_max)
        # A connection of its own: XREADGROUP BLOCK holds it; named, so aclose can
        # CLIENT UNBLOCK it instead of waiting out the block.
        self._reader_name = f"catga-reader:{consumer}"
        self._reader = Redis.from_url(
            config.url,
            single_connection_client=True,
            client_name=self._reader_name,
            socket_timeout=config.socket_timeout,
            socket_connect_timeout=config.socket_connect_timeout,
        )
        self._cursor = "0-0"
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._closing = False
        self._stop = asyncio.Event()
        self._closed = False
        self._loop: asyncio.Task[None] | None = None
        self._warned_delay = False

    @property
    def route(self) -> str:
        """The route consumed."""
        return self._route

    async def start(self) -> None:
        """Create the group if needed and start reading."""
        await ensure_group(self._client, self._key, self._group)
        self._loop = asyncio.create_task(self._run(), name=f"catga-redis-reader:{self._key}")
        self._loop.add_done_callback(self._loop_done)

    async def aclose(self) -> None:
        """Stop reading, wait for in-flight handlers and their acks; idempotent.

        Entries read but not settled stay pending under this consumer and are taken
        over by another after ``claim_idle``.
        """
        if self._closed:
            return
        self._closed = self._closing = True
        self._stop.set()
        if self._loop is not None:
            await self._stop_reader(self._loop)
        await self._pool.wait()
        await self.acker.aclose()
        try:
            with map_redis_errors(what="forget consumer"):
                await self._scripts.forget_consumer(
                    keys=[self._key], args=[self._group, self._consumer]
                )
        except Exception as exc:  # noqa: BLE001 - an idle consumer entry is harmless
            logger.info("could not remove consumer", consumer=self._consumer, error=repr(exc))
        await self._reader.aclose()
        self._on_close(self)

    # Settling -------------------------------------------------------------

    async def nack(self, delivery: StreamDelivery, delay: float) -> None:
        idle_ms = self._config.ms(self._config.claim_idle)
        delay_ms = round(delay * 1000)
        if delay_ms > idle_ms and not self._warned_delay:
            self._warned_delay = True
            logger.warning(
                "nack delay longer than claim_idle: shortened to it",
                route=self._route,
                delay=delay,
                claim_idle=self._config.claim_idle,
            )
        # A little past the threshold, so the claim at `delay` never just misses it.
        await self.touch(delivery, idle_ms=max(2, idle_ms - delay_ms + 2))
        self._next_claim = min(self._next_claim, time.monotonic() + min(delay, idle_ms / 1000))

    async def touch(self, delivery: StreamDelivery, *, idle_ms: int) -> None:
        with map_redis_errors(what="XCLAIM (nack / in_progress)"):
            await self._scripts.touch(
                keys=[self._key],
                args=[
                    self._group,
                    self._consumer,
                    delivery.entry_id,
                    delivery.delivery_count,
                    idle_ms,
                ],
            )

    async def dead_letter(self, entry_id: str, count: int, reason: str) -> None:
        with map_redis_errors(what="dead-letter"):
            await self._scripts.dead_letter(
                keys=[self._key, self._dlq],
                args=[
                    self._group,
                    self._consumer,
                    entry_id,
                    count,
                    reason,
                    repr(time.time()),
                    self._config.dlq_max,
                ],
            )

    # The loop ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self._config.reconnect_max)
        slots = self._pool.slots
        while not self._closing:
            await slots.wait()
            if self._closing:
                return
            try:
                await self._step(min(slots.free, self._config.read_batch))
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the consumer goes on, after a pause
                if self._closing:
                    return
                await self._recover(exc)
                await backoff.sleep(self._stop)

    async def _step(self, n: int) -> None:
        now = time.monotonic()
        if self._config.retention is not None and now >= self._next_trim:
            self._next_trim = now + self._config.trim_interval
            await self._trim()
        if now >= self._next_claim:
            entries = await self._claim(n)
            if entries:
                self._dispatch(entries)
                return
        block = max(1, round(min(self._config.block, self._next_claim - now) * 1000))
        with map_redis_errors(what="XREADGROUP"):
            reply = cast(
                "list[Any]",
                await self._reader.xreadgroup(
                    self._group, self._consumer, {self._key: ">"}, count=n, block=block
                ),
            )
        if reply:
            self._dispatch([(entry_id, fields, 1) for entry_id, fields in reply[0][1]])

    async def _claim(self, n: int) -> list[tuple[Any, dict[bytes, bytes], int]]:
        with map_redis_errors(what="XAUTOCLAIM"):
            cursor, found, dead = await self._scripts.claim(
                keys=[self._key, self._dlq],
                args=[
                    self._group,
                    self._consumer,
                    self._config.ms(self._config.claim_idle),
                    self._cursor,
                    n,
                    self._config.max_deliveries,
                    f"max deliveries ({self._config.max_deliveries}) exceeded",
                    repr(time.time()),
                    self._config.dlq_max,
                ],
            )
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if dead:
            logger.warning("dead-lettered past max deliveries", route=self._route, count=dead)
        if self._cursor == "0-0" and len(found) < n:
            self._next_claim = time.monotonic() + self._config.claim_interval
        return [(entry_id, _pairs(fields), count) for entry_id, fields, count in found]

    async def _trim(self) -> None:
        assert self._config.retention is not None
        with map_redis_errors(what="XTRIM"):
            await self._scripts.trim(
                keys=[self._key],
                args=[
                    self._config.ms(self._config.retention),
                    self._config.ms(self._config.forget_idle_consumers),
                ],
            )

    def _dispatch(self, entries: list[tuple[Any, dict[bytes, bytes], int]]) -> None:
        for raw_id, fields, count in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            try:
                envelope = _codec.decode_entry(fields)
            except SerializationError as exc:
                envelope = _codec.garbage_envelope(entry_id, fields)
                delivery = StreamDelivery(self, entry_id, envelope, count)
                self._pool.slots.take(1)
                self._pool.start_call(self._reject(delivery, f"undecodable entry: {exc}"))
                continue
            self._pool.slots.take(1)
            self._pool.start(StreamDelivery(self, entry_id, envelope, count))

    async def _reject(self, delivery: StreamDelivery, reason: str) -> None:
        logger.error("dead-lettered", route=self._route, entry=delivery.entry_id, reason=reason)
        await delivery.dead_letter(reason)

    async def _recover(self, exc: Exception) -> None:
        if "NOGROUP" in str(exc):  # the stream or group is gone (Redis lost its data)
            logger.warning("consumer group missing; recreating", stream=self._key)
            try:
                await ensure_group(self._client, self._key, self._group)
            except Exception as again:  # noqa: BLE001 - the next round tries again
                logger.warning("recreating the group failed", error=repr(again))
            return
        logger.warning("reading the stream failed; retrying", stream=self._key, error=repr(exc))

    async def _stop_reader(self, loop: asyncio.Task[None]) -> None:
        """Unblock the reader's XREADGROUP (CLIENT UNBLOCK) until the loop has ended."""
        while not loop.done():
            try:
                with map_redis_errors(what="CLIENT UNBLOCK"):
                    for client in await self._client.client_list():
                        if client.get("name") == self._reader_name:
                            await self._client.client_unblock(int(client["id"]))
            except Exception as exc:  # noqa: BLE001 - the read ends at its block time anyway
                logger.debug("CLIENT UNBLOCK failed", error=repr(exc))
            await asyncio.wait([loop], timeout=0.05)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream reader stopped", route=self._route, exc_info=task.exception())


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
