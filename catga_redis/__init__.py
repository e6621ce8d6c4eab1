"""catga's Redis backend: streams for QoS 1/2, pub/sub for QoS 0, a Lua idempotency store."""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('catga_redis needs the Redis driver: pip install "catga[redis]"') from exc

from . import exceptions
from ._config import RedisConfig
from ._container import RedisContainer
from ._idempotency import RedisIdempotencyStore
from ._transport import RedisTransport, TransportState

__all__ = [
    "RedisConfig",
    "RedisContainer",
    "RedisIdempotencyStore",
    "RedisTransport",
    "TransportState",
    "exceptions",
]
