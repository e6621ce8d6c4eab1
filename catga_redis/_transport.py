"""The Redis transport: streams for QoS 1 and 2, pub/sub for QoS 0 and replies.

Keys, for a route ``r`` and the default prefix ``catga``: the stream ``catga:r``, its
dead letters ``catga:r:dlq``, the QoS 0 channel ``catga:r:q0``, QoS 2 producer dedup
keys ``catga:dedup:r:{message_id}``, and each transport's reply channel
``catga:reply:{consumer}``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self, cast

import msgspec
import structlog
from redis.asyncio import Redis

from catga import QoS
from catga.exceptions import (
    ConfigurationError,
    DeadLetterError,
    NotConnectedError,
    RequestTimeoutError,
    TransportError,
)
from catga.typing import DeadLetter, DeliveryHandler, Envelope, Subscription

from . import _codec
from ._config import RedisConfig
from ._idempotency import make_client
from ._pubsub import FanoutSubscription, PubSubHub
from ._scripts import Scripts
from ._stream import StreamSubscription
from .exceptions import map_redis_errors

__all__ = ["RedisTransport", "TransportState"]

logger = structlog.get_logger(__name__)

# Envelopes per script call of publish_many: bounds how long one call blocks Redis.
_CHUNK = 1000


class TransportState(enum.Enum):
    """Where a transport is in its life."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class RedisTransport:
    """A :class:`~catga.typing.Transport` over Redis streams and pub/sub.

    Args:
        config: URL, key prefix, consumer name, timings (default: ``RedisConfig()``).
    """

    def __init__(self, config: RedisConfig | None = None) -> None:
        self.config = config if config is not None else RedisConfig()
        self.state = TransportState.NEW
        self._client: Redis | None = None
        self._scripts: Scripts | None = None
        self._hub: PubSubHub | None = None
        self._reply_channel = f"{self.config.prefix}:reply:{self.config.consumer}"
        self._waiting: dict[str, list[asyncio.Future[Envelope]]] = {}
        self._subscriptions: set[Any] = set()
        self._seq = itertools.count(1)
        self._closing = False

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, check the server, and listen on this transport's reply channel.

        Raises:
            RedisConnectionError: Redis cannot be reached.
            ConfigurationError: the server's ``maxmemory-policy`` is not ``noeviction``
                (with ``require_noeviction``).
        """
        if self.state is TransportState.OPEN:
            return
        client = make_client(self.config)
        try:
            await self._check_server(client)
            hub = PubSubHub(client, self.config.reconnect_max)
            await hub.listen(self._reply_channel, self._on_reply)
        except BaseException:
            await client.aclose()
            raise
        self._client, self._hub, self._scripts = client, hub, Scripts(client)
        self.state = TransportState.OPEN

    async def aclose(self) -> None:
        """Close subscriptions (in-flight handlers finish), fail waiting requests, disconnect.

        Idempotent; a call while another is closing returns at once.
        """
        if self._closing:
            return
        if self.state is not TransportState.OPEN:
            self.state = TransportState.CLOSED
            return
        self._closing = True
        try:
            await asyncio.gather(*(sub.aclose() for sub in list(self._subscriptions)))
            for waiters in self._waiting.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(NotConnectedError("transport closed before the reply"))
            self._waiting.clear()
            if self._hub is not None:
                await self._hub.aclose()
            if self._client is not None:
                await self._client.aclose()
        finally:
            self._client = self._hub = self._scripts = None
            self.state, self._closing = TransportState.CLOSED, False

    async def _check_server(self, client: Redis) -> None:
        with map_redis_errors(what="connect"):
            await client.ping()
            try:
                reply = cast("dict[Any, Any]", await client.config_get("maxmemory-policy"))
                policy = _text(reply.get("maxmemory-policy", reply.get(b"maxmemory-policy")))
            except Exception as exc:  # noqa: BLE001 - CONFIG is often disabled on managed Redis
                logger.debug("CONFIG GET not allowed; server not checked", error=repr(exc))
                return
        if policy is None or policy == "noeviction":
            return
        text = (
            f"Redis maxmemory-policy is {policy!r}: evicted dedup and idempotency "
            "keys break QoS 2, and evicted streams lose messages; set it to 'noeviction'"
        )
        if self.config.require_noeviction:
            raise ConfigurationError(text + " (or pass require_noeviction=False)")
        logger.warning(text)

    def _connected(self) -> tuple[Redis, Scripts]:
        # Open while closing too: in-flight handlers may still reply and publish.
        if self._client is None or self._scripts is None:
            state = "closed" if self.state is TransportState.CLOSED else "not connected"
            raise NotConnectedError(
                f"RedisTransport is {state}: call `await transport.connect()` first "
                "(or use `async with transport:`)"
            )
        return self._client, self._scripts

    # Publishing ----------------------------------------------------------------

    async def publish(self, route: str, envelope: Envelope, *, qos: QoS) -> None:
        """Hand an envelope to a route; at QoS >= 1 return once Redis stored it.

        Args:
            route: where to publish.
            envelope: the message; at QoS 2 its ``message_id`` is deduplicated.
            qos: 0 ``PUBLISH`` (nothing stored); 1 ``XADD``; 2 ``XADD`` once per id.

        Raises:
            NotConnectedError: not connected.
            RedisTransportError: Redis failed; the message may or may not be stored
                (publish again with the same id at QoS 2 to be sure).
        """
        client, scripts = self._connected()
        key = f"{self.config.prefix}:{route}"
        data = _codec.encode(envelope)
        with map_redis_errors(what=f"publish to {route}"):
            if qos == QoS.AT_MOST_ONCE:
                await client.publish(f"{key}:q0", data)
            elif qos == QoS.AT_LEAST_ONCE:
                await client.xadd(key, {_codec.FIELD: data})
            else:
                await scripts.publish_once(
                    keys=[key, self._dedup_key(route, envelope)],
                    args=[self.config.ms(self.config.dedup_window), data],
                )

    async def publish_many(self, route: str, envelopes: Sequence[Envelope], *, qos: QoS) -> None:
        """Publish several envelopes, stored in order: one script call per 1,000.

        Raises:
            NotConnectedError: not connected.
            RedisTransportError: Redis failed; some may be stored (see :meth:`publish`).
        """
        _, scripts = self._connected()
        key = f"{self.config.prefix}:{route}"
        for first in range(0, len(envelopes), _CHUNK):
            chunk = envelopes[first : first + _CHUNK]
            encoded = [_codec.encode(e) for e in chunk]
            with map_redis_errors(what=f"publish to {route}"):
                if qos == QoS.AT_MOST_ONCE:
                    await scripts.publish_many(keys=[f"{key}:q0"], args=encoded)
                elif qos == QoS.AT_LEAST_ONCE:
                    await scripts.xadd_many(keys=[key], args=encoded)
                else:
                    await scripts.publish_once(
                        keys=[key, *(self._dedup_key(route, e) for e in chunk)],
                        args=[self.config.ms(self.config.dedup_window), *encoded],
                    )

    def _dedup_key(self, route: str, envelope: Envelope) -> str:
        return f"{self.config.prefix}:dedup:{route}:{envelope.message_id}"

    # Request / reply -----------------------------------------------------------

    async def request(self, route: str, envelope: Envelope, *, timeout: float) -> Envelope:
        """Add the request to the route's stream with this transport's reply channel; wait.

        No producer dedup, even at QoS 2: a retried request must reach the consumer,
        whose idempotency store answers it from the stored result.

        Raises:
            NotConnectedError: not connected, or closed while waiting.
            RequestTimeoutError: no reply within ``timeout`` seconds.
            RedisTransportError: the request could not be stored.
        """
        client, _ = self._connected()
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(envelope.message_id, [])
        waiters.append(future)
        request = msgspec.structs.replace(envelope, reply_to=self._reply_channel)
        try:
            async with asyncio.timeout(timeout):
                with map_redis_errors(what=f"request to {route}"):
                    await client.xadd(
                        f"{self.config.prefix}:{route}", {_codec.FIELD: _codec.encode(request)}
                    )
                return await future
        except TimeoutError:
            raise RequestTimeoutError(envelope.message_id, timeout) from None
        except TransportError as exc:
            if self._closing or self.state is TransportState.CLOSED:
                # aclose() cut the connection under the XADD: say so, not "Redis failed".
                raise NotConnectedError("RedisTransport closed while a request waited") from exc
            raise
        finally:
            waiters.remove(future)
            if not waiters:
                self._waiting.pop(envelope.message_id, None)

    async def reply(self, request: Envelope, reply: Envelope) -> None:
        """``PUBLISH`` the reply to the requester's channel; nobody waiting drops it.

        Raises:
            NotConnectedError: not connected.
            RedisTransportError: Redis failed.
        """
        client, _ = self._connected()
        if request.reply_to is None:
            return
        with map_redis_errors(what="reply"):
            await client.publish(request.reply_to, _codec.encode_reply(request.message_id, reply))

    def _on_reply(self, data: bytes) -> None:
        try:
            request_id, reply = _codec.decode_reply(data)
        except Exception as exc:  # noqa: BLE001 - a stray message on our channel
            logger.warning("undecodable reply dropped", error=repr(exc))
            return
        for waiter in self._waiting.get(request_id, ()):
            if not waiter.done():
                waiter.set_result(reply)

    # Consuming -------------------------------------------------------------------

    async def subscribe(
        self, route: str, handler: DeliveryHandler, *, group: str, qos: QoS, concurrency: int = 16
    ) -> Subscription:
        """Start consuming a route; consumers sharing ``group`` compete for messages.

        Args:
            route: the route to consume.
            handler: awaited once per delivery; it should settle the delivery. One that
                raises without settling is logged and nacked.
            group: consumer group (created at the start of the retained stream).
            qos: 0 for the pub/sub channel, 1 or 2 for the stream.
            concurrency: handlers running at once; reads never take more entries.

        Returns:
            The running subscription; ``aclose()`` it to stop.

        Raises:
            NotConnectedError: not connected, or closing.
            ValueError: ``concurrency`` < 1.
            RedisTransportError: the group could not be created.
        """
        client, scripts = self._connected()
        if self._closing:
            raise NotConnectedError("RedisTransport is closing: no new subscriptions")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        sub: StreamSubscription | FanoutSubscription
        if qos == QoS.AT_MOST_ONCE:
            assert self._hub is not None
            sub = FanoutSubscription(
                hub=self._hub,
                client=client,
                config=self.config,
                route=route,
                group=group,
                handler=handler,
                concurrency=concurrency,
                on_close=self._subscriptions.discard,
            )
        else:
            sub = StreamSubscription(
                client=client,
                scripts=scripts,
                config=self.config,
                route=route,
                group=group,
                consumer=f"{self.config.consumer}.{next(self._seq)}",
                handler=handler,
                concurrency=concurrency,
                on_close=self._subscriptions.discard,
            )
        await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def dead_letters(self, route: str, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of a route, oldest first.

        Raises:
            NotConnectedError: not connected.
            RedisTransportError: Redis failed.
        """
        client, _ = self._connected()
        with map_redis_errors(what="XRANGE dead letters"):
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await client.xrange(f"{self.config.prefix}:{route}:dlq", count=limit),
            )
        return [_dead_letter(route, entry_id, fields) for entry_id, fields in entries]

    async def replay_dead_letter(self, route: str, dead_letter_id: str) -> None:
        """Add a dead letter back to its stream (no dedup) and remove it from the DLQ, atomically.

        Raises:
            NotConnectedError: not connected.
            DeadLetterError: no such dead letter on the route (or nothing to replay).
            RedisTransportError: Redis failed.
        """
        _, scripts = self._connected()
        key = f"{self.config.prefix}:{route}"
        with map_redis_errors(what="replay dead letter"):
            done = await scripts.replay(keys=[key, f"{key}:dlq"], args=[dead_letter_id])
        if done != 1:
            raise DeadLetterError(f"no dead letter {dead_letter_id!r} to replay on route {route!r}")


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _dead_letter(route: str, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    meta = {k: v for k, v in fields.items() if k.startswith(b"catga-")}
    original = {k: v for k, v in fields.items() if not k.startswith(b"catga-")}
    source_id = meta.get(b"catga-id", entry_id).decode()
    try:
        envelope = _codec.decode_entry(original)
    except Exception:  # noqa: BLE001 - garbage is listed as what it was
        envelope = _codec.garbage_envelope(source_id, original)
    return DeadLetter(
        id=entry_id.decode(),
        route=route,
        envelope=envelope,
        reason=meta.get(b"catga-reason", b"").decode(errors="replace"),
        delivery_count=int(meta.get(b"catga-count", b"0")),
        dead_lettered_at=float(meta.get(b"catga-at", b"0") or time.time()),
    )
