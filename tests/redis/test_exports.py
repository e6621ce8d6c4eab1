"""catga_redis exports exactly its public names."""

from __future__ import annotations

import pytest

import catga_redis

pytestmark = pytest.mark.redis


def test_all_lists_the_public_names() -> None:
    """__all__ is sorted and equals the module's public attributes."""
    public = {n for n in vars(catga_redis) if not n.startswith("_")} - {"redis", "annotations"}
    assert catga_redis.__all__ == sorted(catga_redis.__all__)
    assert set(catga_redis.__all__) == public
