"""Cost growth (placeholder until written)."""

from __future__ import annotations

from ._harness import Section


def section(quick: bool, urls: dict[str, str]) -> Section:
    return Section("growth", [])
