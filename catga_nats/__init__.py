"""catga's NATS backend: JetStream for QoS 1/2, core NATS for QoS 0, a KV idempotency store."""

from __future__ import annotations

try:
    import nats  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('catga_nats needs the NATS driver: pip install "catga[nats]"') from exc

from ._config import NatsConfig
from ._container import NatsContainer
from ._idempotency import NatsIdempotencyStore
from ._transport import NatsTransport

__all__ = ["NatsConfig", "NatsContainer", "NatsIdempotencyStore", "NatsTransport"]
