"""Timing, rows and sections shared by every benchmark module.

Methodology (the same for every row): the work's inputs are made before the
clock starts; ``time.perf_counter_ns`` brackets a plain ``for`` loop of
``calls`` calls; one shorter warm-up run is discarded, then ``repeats`` runs
are timed. A row reports the median of the per-run ns/call and the fastest
run. The garbage collector stays on while timing (allocation-heavy code pays
for it, as in production) and ``gc.collect()`` runs before every run.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

__all__ = [
    "Budget",
    "Row",
    "Section",
    "Target",
    "environment",
    "make_row",
    "measure_async",
    "measure_sync",
    "progress",
    "render_rows",
]


class Row(TypedDict):
    """One measured case: the shape every section and every peer implementation uses."""

    group: str
    case: str
    impl: str
    qos: int | None
    ns_per_call: float  # median over the repeats
    us_per_call: float  # the same, in microseconds
    min_ns_per_call: float  # the fastest repeat
    calls: int  # timed calls per repeat
    repeats: int
    note: str


@dataclass(frozen=True)
class Budget:
    """How long each case runs: ``repeats`` timed runs of ``calls`` calls, after a warm-up."""

    calls: int
    repeats: int = 5

    @property
    def warmup_calls(self) -> int:
        """Calls in the discarded warm-up run (enough to fill every cache)."""
        return max(1_000, self.calls // 10)


@dataclass(frozen=True)
class Target:
    """A figure the project promised: ``row`` (group, case, impl, qos) must stay at or below."""

    label: str
    group: str
    case: str
    impl: str
    qos: int | None
    limit_us: float

    def check(self, rows: list[Row]) -> dict[str, Any]:
        """Return the target with the measured median and whether it is met."""
        found = [
            r
            for r in rows
            if (r["group"], r["case"], r["impl"], r["qos"])
            == (self.group, self.case, self.impl, self.qos)
        ]
        measured = found[0]["us_per_call"] if found else None
        return {
            "target": self.label,
            "limit_us": self.limit_us,
            "measured_us": measured,
            "met": measured is not None and measured <= self.limit_us,
        }


@dataclass
class Section:
    """What one section of the run produced.

    Attributes:
        name: the section's name, used in file names (``inprocess``, later ``redis``...).
        rows: the timed cases.
        targets: the project's targets, checked against ``rows``.
        extra: further results for the JSON (e.g. the RSS run), keyed by name.
        tables: further markdown blocks printed after the rows table.
    """

    name: str
    rows: list[Row]
    targets: list[Target] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)


def make_row(
    group: str,
    case: str,
    impl: str,
    qos: int | None,
    samples: list[float],
    budget: Budget,
    note: str = "",
) -> Row:
    """Build a row from per-repeat ns/call samples."""
    median = statistics.median(samples)
    return Row(
        group=group,
        case=case,
        impl=impl,
        qos=qos,
        ns_per_call=round(median, 1),
        us_per_call=round(median / 1000, 3),
        min_ns_per_call=round(min(samples), 1),
        calls=budget.calls,
        repeats=budget.repeats,
        note=note,
    )


async def measure_async(run: Callable[[int], Awaitable[int]], budget: Budget) -> list[float]:
    """Time ``run(calls)`` (which returns the elapsed ns of its own timed loop) per repeat.

    Returns:
        ns per call of each timed repeat (the warm-up is discarded).
    """
    gc.collect()
    await run(budget.warmup_calls)
    samples = []
    for _ in range(budget.repeats):
        gc.collect()
        samples.append(await run(budget.calls) / budget.calls)
    gc.collect()
    return samples


def measure_sync(run: Callable[[int], int], budget: Budget) -> list[float]:
    """The synchronous twin of :func:`measure_async`."""
    gc.collect()
    run(budget.warmup_calls)
    samples = []
    for _ in range(budget.repeats):
        gc.collect()
        samples.append(run(budget.calls) / budget.calls)
    gc.collect()
    return samples


def environment(command: str) -> dict[str, Any]:
    """Describe the run: the command, Python, the machine and when."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "command": command,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.machine(),
            "loadavg_at_start": [round(x, 2) for x in load] if load else None,
        },
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


_START = time.monotonic()


def progress(message: str) -> None:
    """Report progress on stderr, so stdout carries only the tables."""
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def render_rows(rows: list[Row]) -> str:
    """Return the rows as a markdown table (median and fastest repeat)."""
    lines = [
        "| group | case | impl | QoS | us/call median | us/call min | ns/call median | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        qos = "-" if r["qos"] is None else str(r["qos"])
        lines.append(
            f"| {r['group']} | {r['case']} | {r['impl']} | {qos} | {r['us_per_call']:.3f} | "
            f"{r['min_ns_per_call'] / 1000:.3f} | {r['ns_per_call']:,.0f} | {r['note']} |"
        )
    return "\n".join(lines)
