"""RedisConfig: defaults, validation, impossible combinations."""

from __future__ import annotations

import pytest

from catga.exceptions import ConfigurationError
from catga_redis import RedisConfig

pytestmark = pytest.mark.redis


class TestRedisConfig:
    def test_defaults_are_consistent(self) -> None:
        """The defaults build, and two configs get different consumer names."""
        first, second = RedisConfig(), RedisConfig()
        assert first.prefix == "catga"
        assert first.consumer != second.consumer
        assert first.socket_timeout > first.block
        assert first.claim_idle > first.block

    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            ({"url": "http://localhost:6379"}, "redis://"),
            ({"prefix": ""}, "prefix"),
            ({"prefix": "has space"}, "prefix"),
            ({"consumer": "a b"}, "consumer"),
            ({"block": 0}, "block"),
            ({"claim_idle": -1}, "claim_idle"),
            ({"max_deliveries": 0}, "max_deliveries"),
            ({"read_batch": 0}, "read_batch"),
            ({"retention": 0}, "retention"),
            ({"block": 5.0, "socket_timeout": 5.0}, "socket_timeout .* must exceed block"),
            ({"block": 1.0, "claim_idle": 1.0}, "claim_idle .* must exceed block"),
        ],
    )
    def test_bad_values_are_refused(self, overrides: dict[str, object], match: str) -> None:
        """Out-of-range values and impossible combinations raise ConfigurationError."""
        with pytest.raises((ConfigurationError, ValueError, TypeError), match=match):
            RedisConfig(**overrides)  # type: ignore[arg-type]

    def test_combination_errors_are_configuration_errors(self) -> None:
        """A block longer than the socket timeout is a ConfigurationError (a ValueError)."""
        with pytest.raises(ConfigurationError):
            RedisConfig(block=10.0, socket_timeout=5.0)

    def test_other_schemes(self) -> None:
        """TLS and unix-socket URLs are accepted; retention may be turned off."""
        assert RedisConfig(url="rediss://h:6380/1").url.startswith("rediss")
        assert RedisConfig(url="unix:///tmp/redis.sock").url.startswith("unix")
        assert RedisConfig(retention=None).retention is None

    def test_ms_is_at_least_one(self) -> None:
        """Seconds become whole milliseconds, never 0 (Redis refuses PX 0)."""
        config = RedisConfig()
        assert config.ms(0.0) == 1
        assert config.ms(1.5) == 1500
