"""A type named like ``orders.OrderPlaced``, with no handler (so scanning is unaffected)."""

from __future__ import annotations

from attrs import frozen

from catga import Event


@frozen(kw_only=True)
class OrderPlaced(Event):
    """Same qualified name as ``fixtures_pkg.orders.OrderPlaced``."""
