"""The fault scenarios on Redis and NATS: QoS 1 loses nothing, QoS 2 commits once per id.

Each test runs one scenario of ``scenarios.py`` with its own broker, proxy, producer
and consumer processes (``harness.run``) and checks the ledger. A scenario that finds
a bug in a backend or the core is a strict xfail naming the bug; the fix belongs in
the backend, never in these checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import harness
from .scenarios import SCENARIOS

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

COUNT = 500  # messages per QoS level per run (x3 levels)
RATE = 400.0  # messages per second in all, so faults land while publishing

BUGS = {
    ("broker-restart", "nats"): (
        "BUG catga_nats: after nats-server restarts, the memory lease bucket (the default "
        "lease_storage='memory') is gone and NatsIdempotencyStore never re-creates it: "
        "every QoS 2 claim fails with NoStreamResponseError, so no QoS 2 message is "
        "handled again until the consumer process restarts"
    ),
    ("stale-lease", "redis"): (
        "BUG catga core (IdempotencyBehavior) + catga_redis: a delivery whose lease "
        "expired before complete() (the key expired, nobody took over) gets its commit "
        "refused, yet the behaviour returns the result and the worker acks: the message "
        "is gone with no committed result"
    ),
}

CASES = [
    pytest.param(
        name,
        backend,
        id=f"{name}-{backend}",
        marks=[
            getattr(pytest.mark, backend),
            *(
                [pytest.mark.xfail(strict=True, reason=BUGS[name, backend])]
                if (name, backend) in BUGS
                else []
            ),
        ],
    )
    for name in SCENARIOS
    for backend in ("redis", "nats")
    if not (name == "broker-restart-file-leases" and backend == "redis")
]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_scenario(name: str, backend: str, tmp_path: Path) -> None:
    result = harness.run(SCENARIOS[name], backend, tmp_path, count=COUNT, rate=RATE)
    levels = {level.qos: level for level in result.levels}
    # QoS 0: nothing invented (loss is allowed and reported).
    assert levels[0].invented == 0
    assert levels[0].handled <= levels[0].sent
    # QoS 1: every acked id handled at least once.
    assert levels[1].lost == 0, result.failures()
    # QoS 2: every acked id committed exactly once.
    assert levels[2].lost == 0, result.failures()
    assert levels[2].duplicates == 0, result.failures()
    # Bad input in the DLQ with a reason, no good message there, consumers alive.
    assert result.bad_in_dlq == result.bad_injected, result.failures()
    assert result.good_in_dlq == 0, result.failures()
    assert result.consumers_alive == result.consumers_expected, result.failures()
    assert result.ok, result.failures()
