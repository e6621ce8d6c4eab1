"""NatsConfig: validation, derived names and subjects; the package's public names."""

from __future__ import annotations

import pytest

import catga_nats
from catga_nats import NatsConfig


class TestNatsConfig:
    def test_defaults_derive_names_from_the_prefix(self) -> None:
        """Stream, DLQ stream and buckets are named after the prefix by default."""
        config = NatsConfig(prefix="shop.orders")
        assert config.stream_name == "SHOP_ORDERS"
        assert config.dlq_stream_name == "SHOP_ORDERS_DLQ"
        assert config.lease_bucket_name == "SHOP_ORDERS_leases"
        assert config.done_bucket_name == "SHOP_ORDERS_done"

    def test_subjects_keep_durable_dlq_and_qos0_apart(self) -> None:
        """Each kind of subject has its own token, so streams never overlap."""
        config = NatsConfig()
        assert config.durable_subject("a.b") == "catga.js.a.b"
        assert config.dlq_subject("a.b") == "catga.dlq.a.b"
        assert config.fire_subject("a.b") == "catga.q0.a.b"

    def test_a_single_server_string_is_accepted(self) -> None:
        """servers may be one URL."""
        assert NatsConfig(servers="nats://h:1").servers == ("nats://h:1",)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"servers": ()},
            {"prefix": "a.>"},
            {"prefix": ""},
            {"stream": "has space"},
            {"lease_bucket": "a.b"},
            {"storage": "disk"},
            {"ack_wait": 0.0},
            {"max_deliver": 0},
            {"backoff": (1.0, -1.0)},
            {"max_deliver": 2, "backoff": (1.0, 2.0)},
            {"duplicate_window": 100.0, "retention": 10.0},
            {"deliver_policy": "last"},
            {"fetch_batch": 0},
        ],
    )
    def test_invalid_settings_fail_when_built(self, kwargs: dict[str, object]) -> None:
        """Impossible settings raise at construction, not mid-flight."""
        with pytest.raises((ValueError, TypeError)):
            NatsConfig(**kwargs)  # type: ignore[arg-type]

    def test_frozen(self) -> None:
        """A config cannot be changed after it is built."""
        config = NatsConfig()
        with pytest.raises(AttributeError):
            config.prefix = "x"  # type: ignore[misc]


class TestExports:
    def test_all_matches_the_public_names(self) -> None:
        """__all__ is sorted and lists exactly the public names."""
        public = {n for n in dir(catga_nats) if not n.startswith("_")} - {
            "annotations",
            "exceptions",
            "nats",
        }
        assert catga_nats.__all__ == sorted(catga_nats.__all__)
        assert set(catga_nats.__all__) == public
