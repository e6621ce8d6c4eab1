"""Configuration of the NATS backend: one frozen value object, checked when it is built."""

from __future__ import annotations

import re
from typing import Any, Literal

from attrs import field, frozen, validators

__all__ = ["NatsConfig"]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_positive = validators.gt(0.0)


def _name(_: Any, attribute: Any, value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(f"{attribute.name} must match [A-Za-z0-9_-]+ (a NATS name), got {value!r}")


def _prefix(_: Any, attribute: Any, value: str) -> None:
    if not _TOKEN.match(value):
        raise ValueError(
            f"{attribute.name} must be dot-separated [A-Za-z0-9_-] tokens (no wildcards), "
            f"got {value!r}"
        )


def _servers(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"{attribute.name} must hold at least one server URL, got {value!r}")


def _backoff(_: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if any(not isinstance(v, int | float) or v <= 0 for v in value):
        raise ValueError(f"{attribute.name} must hold positive seconds, got {value!r}")


def _to_servers(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@frozen(kw_only=True)
class NatsConfig:
    """Settings of :class:`~catga_nats.NatsTransport` and :class:`~catga_nats.NatsIdempotencyStore`.

    Subjects (``prefix`` "catga", route "orders"): durable messages on
    ``catga.js.orders`` (stream ``stream``), dead letters on ``catga.dlq.orders``
    (stream ``{stream}_DLQ``), QoS 0 on ``catga.q0.orders`` (core NATS, not stored).

    Args:
        servers: NATS URLs.
        name: client connection name (shows in ``nats-server`` monitoring).
        prefix: first subject tokens of every catga subject.
        stream: the JetStream stream holding every durable route (default: from ``prefix``).
        storage: ``"file"`` (survives a server restart) or ``"memory"``.
        retention: seconds a durable message is kept (the stream's ``max_age``); a
            consumer group created later reads what is still kept.
        dlq_retention: seconds a dead letter is kept.
        duplicate_window: seconds the server remembers a ``Nats-Msg-Id``; must not exceed
            ``retention`` (the dedup table is rebuilt from stored messages after a restart).
        ack_wait: seconds before an unsettled delivery is redelivered.
        max_deliver: deliveries before a message is dead-lettered (by the consumer loop).
        backoff: redelivery delays after ack-wait timeouts (``ConsumerConfig.backoff``);
            ``max_deliver`` must exceed its length.
        deliver_policy: where a new consumer group starts: ``"all"`` retained messages
            (like ``XGROUP CREATE ... 0``) or only ``"new"`` ones.
        fetch_batch: most messages asked for per pull request (never more than free slots).
        fetch_timeout: seconds a pull request lingers; with heartbeats every quarter of it,
            a pull that hears nothing is re-created (nats.py #504). Closing a
            subscription waits for the pull in progress, so up to this long.
        publish_timeout: seconds to wait for a PubAck.
        max_in_flight: unacknowledged publishes at once in ``publish_many``.
        lease_storage: storage of the lease bucket. ``"file"`` (default) keeps running
            leases across a server restart. ``"memory"`` makes claims cheaper, but a
            restart then forgets running leases, so a duplicate may start (and repeat
            a side effect) while the first attempt still runs. Results are kept in
            ``storage`` and committed once either way.
        lease_bucket: KV bucket of QoS 2 leases (default: ``{stream}_leases``).
        done_bucket: KV bucket of QoS 2 results (default: ``{stream}_done``).
        lease_ttl: the lease bucket's TTL, the hard upper bound of one lease (per-key
            TTL is ignored on nats-server 2.9, so a lease longer than this ends early).
        done_ttl: the done bucket's TTL, the upper bound of result retention.
        reconnect_wait: seconds between reconnect attempts.
        connect_timeout: seconds the first connect may take (reconnects are endless).
    """

    servers: tuple[str, ...] = field(
        default=("nats://127.0.0.1:4222",), converter=_to_servers, validator=_servers
    )
    name: str = "catga"
    prefix: str = field(default="catga", validator=_prefix)
    stream: str = field(default="", validator=validators.instance_of(str))
    storage: Literal["file", "memory"] = field(
        default="file", validator=validators.in_(("file", "memory"))
    )
    retention: float = field(default=7 * 24 * 3600.0, validator=_positive)
    dlq_retention: float = field(default=30 * 24 * 3600.0, validator=_positive)
    duplicate_window: float = field(default=120.0, validator=_positive)
    ack_wait: float = field(default=30.0, validator=validators.ge(0.1))
    max_deliver: int = field(default=5, validator=[validators.instance_of(int), validators.ge(1)])
    backoff: tuple[float, ...] = field(default=(), converter=tuple, validator=_backoff)
    deliver_policy: Literal["all", "new"] = field(
        default="all", validator=validators.in_(("all", "new"))
    )
    fetch_batch: int = field(default=100, validator=[validators.instance_of(int), validators.ge(1)])
    fetch_timeout: float = field(default=1.0, validator=validators.ge(0.1))
    publish_timeout: float = field(default=5.0, validator=_positive)
    max_in_flight: int = field(
        default=256, validator=[validators.instance_of(int), validators.ge(1)]
    )
    lease_storage: Literal["file", "memory"] = field(
        default="file", validator=validators.in_(("file", "memory"))
    )
    lease_bucket: str = field(default="", validator=validators.instance_of(str))
    done_bucket: str = field(default="", validator=validators.instance_of(str))
    lease_ttl: float = field(default=120.0, validator=_positive)
    done_ttl: float = field(default=24 * 3600.0, validator=_positive)
    reconnect_wait: float = field(default=0.5, validator=_positive)
    connect_timeout: float = field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_deliver <= len(self.backoff):
            raise ValueError(
                f"max_deliver ({self.max_deliver}) must exceed len(backoff) "
                f"({len(self.backoff)}): later backoff steps would never be used"
            )
        if self.duplicate_window > self.retention:
            raise ValueError(
                f"duplicate_window ({self.duplicate_window}s) must not exceed retention "
                f"({self.retention}s): the server forgets ids of messages it no longer keeps"
            )
        for attr in ("stream", "lease_bucket", "done_bucket"):
            value = getattr(self, attr)
            if value:
                _name(self, getattr(type(self).__attrs_attrs__, attr), value)

    @property
    def stream_name(self) -> str:
        """The durable stream's name."""
        return self.stream or self.prefix.replace(".", "_").upper()

    @property
    def dlq_stream_name(self) -> str:
        """The dead-letter stream's name."""
        return f"{self.stream_name}_DLQ"

    @property
    def lease_bucket_name(self) -> str:
        """The KV bucket of QoS 2 leases."""
        return self.lease_bucket or f"{self.stream_name}_leases"

    @property
    def done_bucket_name(self) -> str:
        """The KV bucket of QoS 2 results."""
        return self.done_bucket or f"{self.stream_name}_done"

    def durable_subject(self, route: str) -> str:
        """The JetStream subject of a route."""
        return f"{self.prefix}.js.{route}"

    def dlq_subject(self, route: str) -> str:
        """The dead-letter subject of a route."""
        return f"{self.prefix}.dlq.{route}"

    def fire_subject(self, route: str) -> str:
        """The core NATS (QoS 0) subject of a route."""
        return f"{self.prefix}.q0.{route}"
