"""The Redis backend's settings: one frozen value object, checked when it is built."""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen, validators

from catga.exceptions import ConfigurationError

__all__ = ["RedisConfig"]

_SCHEMES = ("redis", "rediss", "unix")
_positive = validators.gt(0.0)
_positive_int = [validators.instance_of(int), validators.ge(1)]


def _default_consumer() -> str:
    # Unique per process and per config: a restarted process must not inherit the
    # pending entries of its previous life under the same name (they are reclaimed).
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _url(_: Any, attribute: Any, value: str) -> None:
    if urlsplit(value).scheme not in _SCHEMES:
        raise ConfigurationError(
            f"{attribute.name} must be a redis://, rediss:// or unix:// URL, got {value!r}"
        )


def _name(_: Any, attribute: Any, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ConfigurationError(f"{attribute.name} must be non-empty without spaces: {value!r}")


def _optional_positive(_: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigurationError(f"{attribute.name} must be > 0 or None, got {value!r}")


@frozen(kw_only=True)
class RedisConfig:
    """How catga talks to Redis. Times are in seconds, like every catga option.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket).
        prefix: first part of every key catga writes (``{prefix}:{route}`` streams …).
        consumer: this process's consumer name in its groups; unique per process by
            default (host-pid-random). A subscription appends ``.n`` to it.
        block: how long one ``XREADGROUP`` waits for new entries.
        claim_idle: an entry pending this long without ``in_progress()`` is taken over
            by another consumer (``XAUTOCLAIM``); keep it above the worker's keepalive.
            Also the longest ``nack`` delay: longer ones are shortened to it.
        claim_interval: how often a subscription looks for entries to take over.
        max_deliveries: deliveries before an entry is dead-lettered instead.
        read_batch: most entries one read or claim takes (never more than free slots).
        dedup_window: seconds a QoS 2 ``message_id`` is remembered by the producer side.
        retention: entries acked by every group are trimmed once older than this
            (``XTRIM MINID``; pending entries never are); ``None`` never trims.
        trim_interval: how often a subscription trims its stream (and removes consumers
            with nothing pending that have been idle ``forget_idle_consumers``).
        forget_idle_consumers: see ``trim_interval``; consumers of processes that died.
        dlq_max: dead letters kept per route (oldest dropped).
        q0_claim_ttl: how long a QoS 0 message's per-group claim key lives.
        socket_timeout: per-command socket timeout; must exceed ``block``.
        socket_connect_timeout: connect timeout.
        reconnect_max: cap on the backoff between reconnect attempts of a consumer loop.
        max_connections: connections per client pool (the transport's, the store's);
            a command waits up to ``socket_timeout`` for a free one. Blocking readers
            (one per subscription) have connections of their own.
        require_noeviction: fail ``connect()`` when the server's ``maxmemory-policy`` is
            not ``noeviction`` (evicted dedup or idempotency keys break QoS 2); when
            ``False`` it is only logged. Skipped when ``CONFIG GET`` is not allowed.

    Raises:
        ConfigurationError: a value out of range or an impossible combination.
    """

    url: str = field(default="redis://localhost:6379/0", validator=_url)
    prefix: str = field(default="catga", validator=_name)
    consumer: str = field(factory=_default_consumer, validator=_name)
    block: float = field(default=0.5, validator=_positive)
    claim_idle: float = field(default=30.0, validator=_positive)
    claim_interval: float = field(default=1.0, validator=_positive)
    max_deliveries: int = field(default=5, validator=_positive_int)
    read_batch: int = field(default=100, validator=_positive_int)
    dedup_window: float = field(default=120.0, validator=_positive)
    retention: float | None = field(default=24 * 3600.0, validator=_optional_positive)
    trim_interval: float = field(default=60.0, validator=_positive)
    forget_idle_consumers: float = field(default=24 * 3600.0, validator=_positive)
    dlq_max: int = field(default=10_000, validator=_positive_int)
    q0_claim_ttl: float = field(default=60.0, validator=_positive)
    socket_timeout: float = field(default=5.0, validator=_positive)
    socket_connect_timeout: float = field(default=5.0, validator=_positive)
    reconnect_max: float = field(default=5.0, validator=_positive)
    max_connections: int = field(default=50, validator=_positive_int)
    require_noeviction: bool = True

    def __attrs_post_init__(self) -> None:
        if self.socket_timeout <= self.block:
            raise ConfigurationError(
                f"socket_timeout ({self.socket_timeout}s) must exceed block ({self.block}s): "
                "a blocking XREADGROUP longer than the socket timeout fails"
            )
        if self.claim_idle <= self.block:
            raise ConfigurationError(
                f"claim_idle ({self.claim_idle}s) must exceed block ({self.block}s), or "
                "entries are taken over while their consumer is still reading"
            )

    def ms(self, seconds: float) -> int:
        """Return ``seconds`` as whole milliseconds, at least 1 (Redis rejects ``PX 0``)."""
        return max(1, round(seconds * 1000))
