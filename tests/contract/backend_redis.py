"""The redis backend of the conformance suite (set BACKEND to a Backend subclass)."""

from __future__ import annotations

from .conftest import Backend

BACKEND: type[Backend] | None = None
