"""Start-up: streams, consumers and buckets are created, and mismatches are clear errors."""

from __future__ import annotations

import attrs
import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType

from catga import QoS
from catga.exceptions import ConfigurationError
from catga_nats import NatsConfig, NatsIdempotencyStore, NatsTransport
from catga_nats._setup import durable_name, ensure_bucket

pytestmark = pytest.mark.nats


async def noop(delivery: object) -> None:
    """A handler that does nothing."""


class TestStreams:
    async def test_connect_creates_both_streams(
        self, transport: NatsTransport, config: NatsConfig
    ) -> None:
        """The durable and the dead-letter streams exist after connect, with file/memory storage."""
        js = transport.client.jetstream()
        main = await js.stream_info(config.stream_name)
        dlq = await js.stream_info(config.dlq_stream_name)
        assert main.config.subjects == [f"{config.prefix}.js.>"]
        assert dlq.config.subjects == [f"{config.prefix}.dlq.>"]
        assert main.config.duplicate_window == config.duplicate_window

    async def test_second_connect_with_same_config_is_fine(self, config: NatsConfig) -> None:
        """An existing stream with the same settings is accepted."""
        async with NatsTransport(config), NatsTransport(config):
            pass

    async def test_mismatched_stream_is_a_configuration_error(self, config: NatsConfig) -> None:
        """A stream created with another duplicate window fails connect with the difference."""
        async with NatsTransport(config):
            pass
        other = attrs.evolve(config, duplicate_window=60.0)
        transport = NatsTransport(other)
        with pytest.raises(ConfigurationError, match="duplicate_window"):
            await transport.connect()
        with pytest.raises(Exception, match="not connected"):
            await transport.dead_letters("x")


class TestConsumers:
    async def test_subscribe_creates_a_durable_per_route_and_group(
        self, transport: NatsTransport, config: NatsConfig, route: str
    ) -> None:
        """The consumer has explicit ack, ack_wait and the route's filter subject."""
        sub = await transport.subscribe(route, noop, group="g", qos=QoS.AT_LEAST_ONCE)
        info = await transport.client.jetstream().consumer_info(
            config.stream_name, durable_name(route, "g")
        )
        assert info.config.filter_subject == config.durable_subject(route)
        assert info.config.ack_wait == pytest.approx(config.ack_wait)
        assert info.config.ack_policy == "explicit"
        await sub.aclose()

    async def test_mismatched_consumer_is_a_configuration_error(
        self, config: NatsConfig, route: str
    ) -> None:
        """A durable consumer created with another ack_wait fails subscribe."""
        async with NatsTransport(config) as first:
            await (await first.subscribe(route, noop, group="g", qos=QoS.AT_LEAST_ONCE)).aclose()
        async with NatsTransport(attrs.evolve(config, ack_wait=2.0)) as second:
            with pytest.raises(ConfigurationError, match="ack_wait"):
                await second.subscribe(route, noop, group="g", qos=QoS.AT_LEAST_ONCE)

    def test_durable_names_are_valid_and_distinct(self) -> None:
        """Routes that differ only in separators get different, valid consumer names."""
        a, b = durable_name("a.b", "g"), durable_name("a_b", "g")
        assert a != b
        assert "." not in a
        assert "*" not in durable_name("x.*", "g")


class TestBuckets:
    async def test_mismatched_bucket_is_a_configuration_error(
        self, store: NatsIdempotencyStore, config: NatsConfig
    ) -> None:
        """A KV bucket that exists with another TTL is refused with the difference."""
        nc = await nats.connect(config.servers[0])
        try:
            with pytest.raises(ConfigurationError, match="ttl"):
                await ensure_bucket(
                    nc.jetstream(),
                    KeyValueConfig(
                        bucket=config.lease_bucket_name, ttl=5.0, storage=StorageType.MEMORY
                    ),
                )
        finally:
            await nc.close()
