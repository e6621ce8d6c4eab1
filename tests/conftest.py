"""Shared test configuration: hypothesis profiles (``HYPOTHESIS_PROFILE=dev`` for more examples)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# "ci" is deterministic (derandomize) so a run is reproducible, and has no deadline
# because coverage and loaded CI machines make per-example timings meaningless.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Real broker servers on free loopback ports (redis_server, nats_server, own_*_server).
pytest_plugins = ["tests.server_fixtures"]
