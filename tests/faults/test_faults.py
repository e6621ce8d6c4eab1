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

# (scenario, backend) -> the bug that makes it fail; a strict xfail until it is fixed.
BUGS: dict[tuple[str, str], str] = {}

# Bugs this suite found that are fixed now: (scenario, backend) -> (bug, fixing commit).
FIXED = {
    ("broker-restart", "nats"): (
        "after nats-server restarted, the memory lease bucket (then the default) was gone "
        "and NatsIdempotencyStore never re-created it: every QoS 2 claim failed with "
        "NoStreamResponseError until the consumer process restarted",
        "e0cc322 (re-create vanished buckets), 952e108 (file lease bucket by default)",
    ),
    ("stale-lease", "redis"): (
        "a delivery whose lease expired before complete() (key expired, nobody took over) "
        "had its commit refused, yet IdempotencyBehavior returned the result and the worker "
        "acked: the message was gone with no committed result (also in process: duplicates "
        "that joined the attempt got the same uncommitted success)",
        "6533bf3 (a refused commit never reports success)",
    ),
    ("broker-restart", "redis"): (
        "when complete() and then release() both raised (Redis down), the release error "
        "skipped settling the attempt's in-process waiters: a duplicate joined a future "
        "never resolved, its delivery was kept in progress by the keepalive (never "
        "reclaimed), the message was never handled and Worker.stop() hung (seen at 100k "
        "messages, intermittent at CI size)",
        "7756bf1 (settle joined duplicates before releasing; a failed release only logs)",
    ),
}

# The faults each scenario must actually have fired (a run without them proves nothing).
FIRED = {
    "consumer-kill": lambda r: r.self_kills >= 3 and r.external_kills == 3,
    "broker-restart": lambda r: r.broker_restarts == 2,
    "broker-restart-memory-leases": lambda r: r.broker_restarts == 2,
    "network": lambda r: r.cuts == 3 and r.stalls == 2,
    "sigstop": lambda r: r.sigstops >= 1 and r.stale_refused >= 1,
    "stale-lease": lambda r: r.sigstops == 1,
    "garbage": lambda r: r.bad_injected >= 18,
    "mixed": lambda r: (
        r.self_kills >= 1
        and r.external_kills == 2
        and r.broker_restarts == 1
        and r.cuts == 2
        and r.stalls == 1
        and r.sigstops == 1
        and r.bad_injected >= 12
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
    if not (name == "broker-restart-memory-leases" and backend == "redis")
]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_scenario(name: str, backend: str, tmp_path: Path) -> None:
    result = harness.run(SCENARIOS[name], backend, tmp_path, count=COUNT, rate=RATE)
    assert FIRED[name](result), f"the faults did not all fire: {result}"
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
