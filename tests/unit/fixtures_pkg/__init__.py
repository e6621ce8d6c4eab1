"""A package of handler modules that ``HandlerRegistry.scan`` tests walk."""

from __future__ import annotations

from .orders import on_order_placed

__all__ = ["on_order_placed"]
