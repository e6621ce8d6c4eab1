"""Quality of service levels."""

from __future__ import annotations

import enum

__all__ = ["QoS"]


class QoS(enum.IntEnum):
    """Quality of service per hop, as in MQTT."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2
