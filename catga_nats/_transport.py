"""The NATS transport: core NATS for QoS 0, JetStream for QoS 1 and 2, request/reply."""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from catga._qos import QoS
from catga.exceptions import NotConnectedError, RequestTimeoutError, SerializationError
from catga.typing import DeadLetter, DeliveryHandler, Envelope, Subscription

from . import _wire
from ._config import NatsConfig
from ._consumer import FireSubscription, PullSubscription
from ._setup import ensure_consumer, ensure_streams, open_client
from .exceptions import translate_errors

__all__ = ["NatsTransport"]

logger = structlog.get_logger(__name__)

_MAX_REASON = 2000


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class _Pending:
    """A request in flight; every caller with the same message id shares its reply."""

    __slots__ = ("future", "subject", "waiters")

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self.waiters = 0


class NatsTransport:
    """A :class:`~catga.typing.Transport` on NATS.

    * QoS 0: core ``publish`` on ``{prefix}.q0.{route}``; subscribers in a queue group.
    * QoS 1 and 2: JetStream ``publish`` awaiting the PubAck with ``Nats-Msg-Id`` =
      ``message_id`` (a retry within ``duplicate_window`` is stored once); a durable pull
      consumer per (route, group) with explicit ack, ``nak(delay)``, ``in_progress()``;
      after ``max_deliver`` deliveries the consumer loop dead-letters the message to
      ``{prefix}.dlq.{route}`` with the reason and terminates it.
    * Requests travel durably with a reply subject under this client's inbox; replies
      come back over core NATS.

    Args:
        config: servers, subjects, timings.
    """

    def __init__(self, config: NatsConfig | None = None) -> None:
        self.config = config if config is not None else NatsConfig()
        self._state = _State.UNOPENED
        self._closing = False
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subscriptions: set[PullSubscription | FireSubscription] = set()
        self._requests: dict[str, _Pending] = {}
        self._by_subject: dict[str, _Pending] = {}
        self._inbox = ""
        self._tokens = itertools.count(1)

    @property
    def client(self) -> Client:
        """The NATS connection (to share with :class:`~catga_nats.NatsIdempotencyStore`).

        Raises:
            NotConnectedError: not connected.
        """
        self._check()
        assert self._nc is not None
        return self._nc

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

    async def connect(self) -> None:
        """Connect, create or check the streams, and open the reply inbox; idempotent.

        Raises:
            ConfigurationError: a stream exists with another configuration.
            NatsConnectionError: no server reachable.
        """
        if self._state is _State.OPEN:
            return
        with translate_errors("connect"):
            nc = await open_client(self.config, "transport")
            try:
                js = nc.jetstream(
                    timeout=self.config.publish_timeout,
                    publish_async_max_pending=self.config.max_in_flight,
                )
                await ensure_streams(js, self.config)
                self._inbox = f"_INBOX.catga.{nc.new_inbox().rsplit('.', 1)[-1]}"
                await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
            except BaseException:
                await nc.close()
                raise
        self._nc, self._js = nc, js
        self._state = _State.OPEN

    async def aclose(self) -> None:
        """Close subscriptions (in-flight handlers finish), fail waiting requests, drain.

        Idempotent; a call while another is closing returns at once.
        """
        if self._closing or self._state is not _State.OPEN:
            self._state = _State.CLOSED if self._state is _State.UNOPENED else self._state
            return
        self._closing = True
        try:
            await asyncio.gather(*(sub.aclose() for sub in list(self._subscriptions)))
            self._subscriptions.clear()
            for pending in self._requests.values():
                if not pending.future.done():
                    pending.future.set_exception(
                        NotConnectedError("NatsTransport closed before the reply")
                    )
            nc, self._nc, self._js = self._nc, None, None
            if nc is not None and not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.drain(), self.config.publish_timeout)
                except Exception as exc:  # noqa: BLE001 - closing must finish
                    logger.warning("drain failed; closing", error=repr(exc))
                    await nc.close()
        finally:
            self._state, self._closing = _State.CLOSED, False

    # Publishing -------------------------------------------------------------

    async def publish(self, route: str, envelope: Envelope, *, qos: QoS) -> None:
        """Hand an envelope to a route; at QoS >= 1 return once JetStream stored it.

        Raises:
            NotConnectedError: not connected.
            PublishTimeoutError: no PubAck in ``publish_timeout`` (maybe stored).
            NatsConnectionError: the connection is closed.
        """
        js = self._jetstream()
        data = _wire.encode(envelope)
        if qos == QoS.AT_MOST_ONCE:
            with translate_errors("publish"):
                await self.client.publish(self.config.fire_subject(route), data)
            return
        subject, headers = self.config.durable_subject(route), {_wire.MSG_ID: envelope.message_id}
        with translate_errors("publish"):
            try:
                await js.publish(subject, data, headers=headers)
            except nats.js.errors.NoStreamResponseError:
                # A memory stream vanishes when nats-server restarts: make it again, once.
                await ensure_streams(js, self.config)
                await js.publish(subject, data, headers=headers)

    async def publish_many(self, route: str, envelopes: Sequence[Envelope], *, qos: QoS) -> None:
        """Publish envelopes in order, at most ``max_in_flight`` unacknowledged at once.

        Raises:
            as :meth:`publish`; when one fails, others may have been stored.
        """
        js = self._jetstream()
        if qos == QoS.AT_MOST_ONCE:
            subject = self.config.fire_subject(route)
            with translate_errors("publish"):
                for envelope in envelopes:
                    await self.client.publish(subject, _wire.encode(envelope))
            return
        subject = self.config.durable_subject(route)
        futures: list[asyncio.Future[PubAck]] = []
        loop = asyncio.get_running_loop()
        # No wait_stall: it costs a task per message. The deadline moves with progress
        # instead: publish_timeout without a free in-flight slot or a PubAck fails.
        try:
            with translate_errors("publish"):
                async with asyncio.timeout(self.config.publish_timeout) as deadline:
                    for envelope in envelopes:
                        futures.append(
                            await js.publish_async(
                                subject,
                                _wire.encode(envelope),
                                headers={_wire.MSG_ID: envelope.message_id},
                            )
                        )
                        deadline.reschedule(loop.time() + self.config.publish_timeout)
                    for future in futures:
                        await future
        finally:
            for future in futures:  # frees the driver's in-flight slots of unanswered ones
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()

    # Request / reply --------------------------------------------------------

    async def request(self, route: str, envelope: Envelope, *, timeout: float) -> Envelope:
        """Publish a request durably with this client's reply subject; wait for the reply.

        Concurrent requests with one ``message_id`` share one publish and one reply. The
        request's ``Nats-Msg-Id`` is unique per attempt, so a retry after a timeout reaches
        the consumer, whose idempotency store answers it at QoS 2.

        Raises:
            NotConnectedError: not connected, or closed while waiting.
            RequestTimeoutError: no reply within ``timeout`` seconds.
        """
        js = self._jetstream()
        pending = self._requests.get(envelope.message_id)
        first = pending is None
        if pending is None:
            pending = _Pending(f"{self._inbox}.{next(self._tokens)}")
            self._requests[envelope.message_id] = pending
            self._by_subject[pending.subject] = pending
        pending.waiters += 1
        try:
            async with asyncio.timeout(timeout):
                if first:
                    await self._send_request(js, route, envelope, pending)
                return await asyncio.shield(pending.future)
        except TimeoutError:
            raise RequestTimeoutError(envelope.message_id, timeout) from None
        finally:
            pending.waiters -= 1
            if pending.waiters == 0:
                self._forget(envelope.message_id, pending)

    async def _send_request(
        self, js: JetStreamContext, route: str, envelope: Envelope, pending: _Pending
    ) -> None:
        request = msgspec.structs.replace(envelope, reply_to=pending.subject)
        try:
            with translate_errors("request"):
                await js.publish(
                    self.config.durable_subject(route),
                    _wire.encode(request),
                    headers={_wire.MSG_ID: f"{envelope.message_id}@{pending.subject}"},
                )
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            raise

    def _forget(self, message_id: str, pending: _Pending) -> None:
        if self._requests.get(message_id) is pending:
            del self._requests[message_id]
        self._by_subject.pop(pending.subject, None)
        if pending.future.done():
            if not pending.future.cancelled():
                pending.future.exception()
        else:
            pending.future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        pending = self._by_subject.get(msg.subject)
        if pending is None or pending.future.done():
            return
        try:
            pending.future.set_result(_wire.decode(msg.data))
        except SerializationError as exc:
            logger.warning("undecodable reply dropped", subject=msg.subject, error=str(exc))

    async def reply(self, request: Envelope, reply: Envelope) -> None:
        """Send ``reply`` to the requester over core NATS; dropped if nobody waits.

        Raises:
            NotConnectedError: not connected.
        """
        nc = self.client
        if request.reply_to is None:
            return
        with translate_errors("reply"):
            await nc.publish(request.reply_to, _wire.encode(reply))

    # Consuming ----------------------------------------------------------------

    async def subscribe(
        self, route: str, handler: DeliveryHandler, *, group: str, qos: QoS, concurrency: int = 16
    ) -> Subscription:
        """Start consuming a route; consumers sharing ``group`` compete for messages.

        QoS 0 joins the core NATS queue group ``group``; QoS >= 1 creates (or checks) the
        durable pull consumer of (route, group) and pulls at most ``concurrency`` at once.

        Raises:
            NotConnectedError: not connected, or closing.
            ConfigurationError: the durable consumer exists with another configuration.
            ValueError: ``concurrency`` < 1.
        """
        js = self._jetstream()
        if self._closing:
            raise NotConnectedError("NatsTransport is closing: no new subscriptions")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        sub: PullSubscription | FireSubscription
        if qos == QoS.AT_MOST_ONCE:
            fire = FireSubscription(route, handler, concurrency)
            nc = self.client
            with translate_errors("subscribe"):
                await fire.start(
                    lambda cb: nc.subscribe(self.config.fire_subject(route), queue=group, cb=cb)
                )
            sub = fire
        else:
            sub = self._pull_subscription(js, route, group, handler, concurrency)
            with translate_errors("subscribe"):
                await sub.start()
        self._subscriptions.add(sub)
        return sub

    def _pull_subscription(
        self,
        js: JetStreamContext,
        route: str,
        group: str,
        handler: DeliveryHandler,
        concurrency: int,
    ) -> PullSubscription:
        config = self.config

        async def bind() -> tuple[str, str]:
            try:
                return config.stream_name, await ensure_consumer(js, config, route, group)
            except nats.js.errors.NotFoundError:  # the stream is gone (memory storage)
                await ensure_streams(js, config)
                return config.stream_name, await ensure_consumer(js, config, route, group)

        return PullSubscription(
            route,
            handler,
            concurrency,
            bind=bind,
            dead_letter=self._write_dead_letter,
            client=self.client,
            max_deliver=config.max_deliver,
            batch=config.fetch_batch,
            timeout=config.fetch_timeout,
        )

    # Dead letters -------------------------------------------------------------

    async def _write_dead_letter(self, route: str, msg: Msg, reason: str, count: int) -> None:
        js = self._jetstream()
        meta = msg.metadata
        original = (msg.headers or {}).get(_wire.MSG_ID) or f"{meta.stream}:{meta.sequence.stream}"
        headers = {
            # The stream sequence makes a repeated dead-lettering (crash before term) one record.
            _wire.MSG_ID: f"dlq:{meta.stream}:{meta.sequence.stream}",
            _wire.REASON: " ".join(reason.split())[:_MAX_REASON],
            _wire.DELIVERIES: str(count),
            _wire.DEAD_AT: repr(time.time()),
            _wire.ORIGINAL_ID: original,
        }
        with translate_errors("dead-letter"):
            await js.publish(self.config.dlq_subject(route), msg.data, headers=headers)

    async def dead_letters(self, route: str, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of a route, oldest first.

        Raises:
            NotConnectedError: not connected.
        """
        js = self._jetstream()
        found: list[DeadLetter] = []
        seq = 1
        with translate_errors("dead_letters"):
            while len(found) < limit:
                try:
                    raw = await js.get_msg(
                        self.config.dlq_stream_name,
                        seq=seq,
                        subject=self.config.dlq_subject(route),
                        next=True,
                    )
                except nats.js.errors.NotFoundError:
                    break
                assert raw.seq is not None
                found.append(_dead_letter(route, raw.seq, raw.data or b"", raw.headers or {}))
                seq = raw.seq + 1
        return found

    # Plumbing -----------------------------------------------------------------

    def _jetstream(self) -> JetStreamContext:
        self._check()
        assert self._js is not None
        return self._js

    def _check(self) -> None:
        # Open while closing too: in-flight handlers may still reply and publish.
        if self._state is not _State.OPEN:
            state = "closed" if self._state is _State.CLOSED else "not connected"
            raise NotConnectedError(
                f"NatsTransport is {state}: call `await transport.connect()` first "
                "(or use `async with transport:`)"
            )


def _dead_letter(route: str, seq: int, data: bytes, headers: dict[str, str]) -> DeadLetter:
    try:
        envelope = _wire.decode(data)
    except SerializationError:  # garbage that was dead-lettered as such: keep the raw bytes
        envelope = Envelope(
            message_id=headers.get(_wire.ORIGINAL_ID, str(seq)), message_type="", body=data
        )
    return DeadLetter(
        id=str(seq),
        route=route,
        envelope=envelope,
        reason=headers.get(_wire.REASON, ""),
        delivery_count=int(headers.get(_wire.DELIVERIES, "0")),
        dead_lettered_at=float(headers.get(_wire.DEAD_AT, "0")),
    )
