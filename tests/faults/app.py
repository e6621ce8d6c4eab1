"""The application both sides of a fault scenario share: message types, routes, timings.

Imported by the harness and by the producer and consumer processes, so all of them
name the messages and configure the backends the same way. Only catga's public API
(and the backends' public configs) is used.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from attrs import frozen

from catga import CatgaOptions, Event, IdempotencyOptions, QoS, RetryPolicy


@frozen(kw_only=True)
class ItemQ0(Event):
    """Fire-and-forget: may be lost, must never be invented."""

    n: int
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE
    message_name: ClassVar[str] = "faults.ItemQ0"


@frozen(kw_only=True)
class ItemQ1(Event):
    """At least once: every acked id is handled, maybe more than once."""

    n: int
    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE
    message_name: ClassVar[str] = "faults.ItemQ1"


@frozen(kw_only=True)
class ItemQ2(Event):
    """Exactly once: every acked id has one committed effect."""

    n: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE
    message_name: ClassVar[str] = "faults.ItemQ2"


TYPES: dict[int, type[Event]] = {0: ItemQ0, 1: ItemQ1, 2: ItemQ2}
ROUTES: dict[type[Any] | str, str] = {ItemQ0: "fq0", ItemQ1: "fq1", ItemQ2: "fq2"}
ROUTE_OF: dict[int, str] = {0: "fq0", 1: "fq1", 2: "fq2"}

# Timings: short enough that a dead consumer's work is taken over within seconds, long
# enough that a loaded 2-core machine does not take over healthy work all the time.
CLAIM_IDLE = 1.5  # Redis: idle time before XAUTOCLAIM; NATS: ack_wait
LEASE = 2.0  # QoS 2 lease (renewed every third while the handler runs)
KEEPALIVE = 0.3  # worker in_progress() period, well below CLAIM_IDLE
BUSY_DELAY = 0.25  # a QoS 2 duplicate busy elsewhere is redelivered after this
MAX_DELIVERIES = 1000  # crashes must not dead-letter good messages in these runs
SOCKET_TIMEOUT = 2.0  # Redis commands; a proxy stall longer than this times out
PUBLISH_TIMEOUT = 2.0  # NATS PubAck wait, and the producer's own bound per publish

NATS_ENV = "CATGA_FAULTS_NATS"  # JSON NatsConfig overrides a scenario sets for its processes
REDIS_ENV = "CATGA_FAULTS_REDIS"  # JSON RedisConfig overrides, likewise

RETRY = RetryPolicy(max_attempts=MAX_DELIVERIES, initial_delay=0.05, max_delay=1.0)


def options() -> CatgaOptions:
    """Mediator options of every process in a scenario."""
    return CatgaOptions(
        routes=ROUTES,
        retry=RETRY,
        idempotency=IdempotencyOptions(lease=LEASE, wait_for_duplicate=0.0),
    )


def redis_config(url: str, prefix: str, **overrides: Any) -> Any:
    """The Redis config of a scenario's processes."""
    from catga_redis import RedisConfig

    values: dict[str, Any] = {
        "url": url,
        "prefix": prefix,
        "block": 0.1,
        "claim_idle": CLAIM_IDLE,
        "claim_interval": 0.1,
        "max_deliveries": MAX_DELIVERIES,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "reconnect_max": 0.5,
        "retention": None,
    }
    values.update(json.loads(os.environ.get(REDIS_ENV) or "{}"))
    values.update(overrides)
    return RedisConfig(**values)


def nats_config(url: str, prefix: str, **overrides: Any) -> Any:
    """The NATS config of a scenario's processes."""
    from catga_nats import NatsConfig

    values: dict[str, Any] = {
        "servers": url,
        "prefix": prefix,
        "storage": "file",
        "ack_wait": CLAIM_IDLE,
        "max_deliver": MAX_DELIVERIES,
        "fetch_timeout": 0.5,
        "publish_timeout": PUBLISH_TIMEOUT,
        "reconnect_wait": 0.2,
        "connect_timeout": 10.0,
        "lease_ttl": 60.0,
        "done_ttl": 3600.0,
    }
    values.update(json.loads(os.environ.get(NATS_ENV) or "{}"))
    values.update(overrides)
    return NatsConfig(**values)


async def open_backend(
    backend: str, url: str, prefix: str, *, with_store: bool = True, **nats: Any
) -> tuple[Any, Any]:
    """Return a connected transport of ``backend`` and its idempotency store (or ``None``)."""
    if backend == "redis":
        from catga_redis import RedisIdempotencyStore, RedisTransport

        cfg = redis_config(url, prefix)
        transport = RedisTransport(cfg)
        await transport.connect()
        return transport, RedisIdempotencyStore(cfg) if with_store else None
    if backend == "nats":
        from catga_nats import NatsIdempotencyStore, NatsTransport

        ncfg = nats_config(url, prefix, **nats)
        transport = NatsTransport(ncfg)
        await transport.connect()
        if not with_store:
            return transport, None
        store = NatsIdempotencyStore(ncfg)
        await store.connect()
        return transport, store
    raise ValueError(f"unknown backend {backend!r}")
