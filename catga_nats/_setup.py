"""Start-up: create the streams, consumers and KV buckets, or check the ones that exist."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import nats
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from catga.exceptions import ConfigurationError

from ._config import NatsConfig
from .exceptions import NatsConnectionError

__all__ = [
    "consumer_config",
    "durable_name",
    "ensure_bucket",
    "ensure_consumer",
    "ensure_streams",
    "open_client",
]

logger = structlog.get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SAME_SECONDS = 1e-6


async def open_client(config: NatsConfig, role: str) -> Client:
    """Connect to NATS with endless reconnects, logging connection events (not per message)."""
    log = logger.bind(client=f"{config.name}-{role}")

    async def error_cb(exc: Exception) -> None:
        log.warning("nats error", error=repr(exc))

    async def disconnected_cb() -> None:
        log.info("nats disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected")

    try:
        async with asyncio.timeout(config.connect_timeout):
            return await _connect(config, role, error_cb, disconnected_cb, reconnected_cb)
    except TimeoutError:
        # With endless reconnects nats-py retries the first connect forever too.
        raise NatsConnectionError(
            f"no NATS server reachable at {', '.join(config.servers)} within "
            f"{config.connect_timeout}s"
        ) from None


async def _connect(config: NatsConfig, role: str, *callbacks: Any) -> Client:
    error_cb, disconnected_cb, reconnected_cb = callbacks
    return await nats.connect(
        list(config.servers),
        name=f"{config.name}-{role}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=config.reconnect_wait,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )


def durable_name(route: str, group: str) -> str:
    """A consumer name for (route, group): readable, and unique thanks to a hash of both."""
    digest = hashlib.sha256(f"{group}\x00{route}".encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", f"{group}__{route}")[:64]
    return f"{readable}_{digest}"


def stream_configs(config: NatsConfig) -> list[StreamConfig]:
    """The durable stream and the dead-letter stream this config needs."""
    storage = StorageType(config.storage)
    return [
        StreamConfig(
            name=config.stream_name,
            subjects=[config.durable_subject(">")],
            retention=RetentionPolicy.LIMITS,
            storage=storage,
            max_age=config.retention,
            duplicate_window=config.duplicate_window,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=config.dlq_stream_name,
            subjects=[config.dlq_subject(">")],
            retention=RetentionPolicy.LIMITS,
            storage=storage,
            max_age=config.dlq_retention,
            duplicate_window=min(config.duplicate_window, config.dlq_retention),
            discard=DiscardPolicy.OLD,
        ),
    ]


async def ensure_streams(js: JetStreamContext, config: NatsConfig) -> None:
    """Create both streams, or check that existing ones match.

    Raises:
        ConfigurationError: a stream exists with other subjects, storage or limits.
    """
    for wanted in stream_configs(config):
        assert wanted.name is not None
        try:
            info = await js.stream_info(wanted.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(wanted)
                continue
            except nats.js.errors.BadRequestError:
                # Another process created it between our lookup and our add (seen with
                # consumers starting together): check the one that won instead.
                info = await js.stream_info(wanted.name)
        _check(
            f"stream {wanted.name!r}",
            info.config,
            wanted,
            ("subjects", "retention", "storage", "max_age", "duplicate_window"),
        )


def consumer_config(config: NatsConfig, route: str, group: str) -> ConsumerConfig:
    """The durable pull consumer of (route, group).

    The server's ``max_deliver`` is unlimited on purpose: the consumer loop dead-letters
    a message once it was delivered ``max_deliver`` times, on a delivery the server
    still makes. With a server-side limit a crash during that last delivery would leave
    the message stranded (only an advisory would tell).
    """
    name = durable_name(route, group)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=config.durable_subject(route),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=config.ack_wait,
        max_deliver=-1,
        backoff=list(config.backoff) or None,
        deliver_policy=DeliverPolicy(config.deliver_policy),
        max_ack_pending=-1,
    )


async def ensure_consumer(js: JetStreamContext, config: NatsConfig, route: str, group: str) -> str:
    """Create the durable consumer of (route, group), or check the existing one.

    Returns:
        The consumer's durable name.

    Raises:
        ConfigurationError: it exists with another subject, ack wait, backoff or policy.
    """
    wanted = consumer_config(config, route, group)
    assert wanted.durable_name is not None
    try:
        info = await js.consumer_info(config.stream_name, wanted.durable_name)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(config.stream_name, wanted)
        return wanted.durable_name
    fields = ["filter_subject", "ack_policy", "max_deliver", "deliver_policy", "backoff"]
    if not config.backoff:  # with a backoff the server sets ack_wait to its first step
        fields.append("ack_wait")
    _check(f"consumer {wanted.durable_name!r}", info.config, wanted, fields)
    return wanted.durable_name


async def ensure_bucket(js: JetStreamContext, wanted: KeyValueConfig) -> KeyValue:
    """Create a KV bucket, or check that an existing one has the same TTL and storage.

    Raises:
        ConfigurationError: the bucket exists with another TTL, storage or history.
    """
    try:
        kv = await js.key_value(wanted.bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(wanted)
    status = await kv.status()
    have = status.stream_info.config
    diffs = []
    if not _same(have.max_age, wanted.ttl):
        diffs.append(f"ttl: {have.max_age} != {wanted.ttl}")
    if have.storage != wanted.storage:
        diffs.append(f"storage: {have.storage} != {wanted.storage}")
    if have.max_msgs_per_subject != wanted.history:
        diffs.append(f"history: {have.max_msgs_per_subject} != {wanted.history}")
    if diffs:
        raise ConfigurationError(_mismatch(f"KV bucket {wanted.bucket!r}", diffs))
    return kv


def _check(what: str, have: Any, wanted: Any, fields: Any) -> None:
    diffs = [
        f"{name}: {getattr(have, name)!r} != {getattr(wanted, name)!r}"
        for name in fields
        if not _same(getattr(have, name), getattr(wanted, name))
    ]
    if diffs:
        raise ConfigurationError(_mismatch(what, diffs))


def _same(have: Any, wanted: Any) -> bool:
    if isinstance(have, float | int) and isinstance(wanted, float | int):
        return abs(have - wanted) < _SAME_SECONDS
    if isinstance(have, list) and isinstance(wanted, list):
        return len(have) == len(wanted) and all(map(_same, have, wanted))
    return bool(have == wanted or (not have and not wanted))


def _mismatch(what: str, diffs: list[str]) -> str:
    return (
        f"{what} exists with another configuration (existing != wanted): {'; '.join(diffs)}. "
        "Use another prefix/stream name, or delete or update it with the nats CLI"
    )
