"""catga's benchmark harness: ``python -m bench`` (full) or ``python -m bench --quick``.

Each section (today: ``inprocess``) returns rows of the same shape, so other
implementations (MediatR-style peers, Redis, NATS) slot into the same tables:
``{"case", "impl", "qos", "ns_per_call", "us_per_call", ...}``. See ``bench/README.md``.
"""

from __future__ import annotations

from ._harness import Budget, Row, Section, Target

__all__ = ["Budget", "Row", "Section", "Target"]
