"""Peak RSS over many QoS 2 sends with distinct ids: memory must stay bounded by retention.

``run(quick)`` starts ``python -m bench.rss`` in a new process (so the figure is
not inflated by earlier sections) and returns its JSON. Alone:
``python -m bench.rss --sends 1000000 --checkpoints 100000,500000,1000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from catga import InMemoryIdempotencyStore, Mediator

from ._fixtures import Ping2, registry

__all__ = ["measure", "run"]

MAX_ENTRIES = 100_000
# Growth allowed once the store is full before the run is called not flat: the
# dict of entries may be rebuilt once (old and new table alive together).
FLAT_SLACK_MIB = 16.0


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _vm_hwm_mib() -> float | None:
    """The peak RSS of this process image alone (Linux), unlike ru_maxrss across exec."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


async def measure(sends: int, checkpoints: list[int], max_entries: int) -> dict[str, Any]:
    """Send ``sends`` QoS 2 commands with distinct ids on one mediator; sample the peak RSS."""
    store = InMemoryIdempotencyStore(max_entries=max_entries)
    mediator = Mediator(registry(), store=store)
    await mediator.send(Ping2())
    baseline = _peak_rss_mib()
    send = mediator.send
    marks = sorted(set(checkpoints) | {sends})
    results: list[dict[str, Any]] = []
    done = 1
    start = time.perf_counter_ns()
    for mark in marks:
        for _ in range(mark - done):
            await send(Ping2())
        done = mark
        results.append(
            {
                "sends": mark,
                "peak_rss_mib": _peak_rss_mib(),
                "vm_hwm_mib": _vm_hwm_mib(),
                "store_size": len(store),
                "us_per_send": round((time.perf_counter_ns() - start) / mark / 1000, 3),
            }
        )
    await mediator.aclose()
    full = [c for c in results if c["sends"] >= max_entries]
    growth = round(results[-1]["peak_rss_mib"] - full[0]["peak_rss_mib"], 1) if full else None
    half = next(c for c in results if c["sends"] >= sends // 2)
    return {
        "sends": sends,
        "max_entries": max_entries,
        "baseline_mib": baseline,
        "checkpoints": results,
        "final_store_size": len(store),
        "growth_after_bound_mib": growth,
        "growth_second_half_mib": round(results[-1]["peak_rss_mib"] - half["peak_rss_mib"], 1),
        "flat": growth is not None and growth <= FLAT_SLACK_MIB and len(store) <= max_entries,
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the measurement in a fresh interpreter and return its result."""
    if quick:
        sends, checkpoints = 200_000, [50_000, 100_000, 150_000, 200_000]
    else:
        sends, checkpoints = 1_000_000, [100_000, 250_000, 500_000, 750_000, 1_000_000]
    command = [
        sys.executable, "-m", "bench.rss", "--sends", str(sends),
        "--checkpoints", ",".join(map(str, checkpoints)), "--max-entries", str(MAX_ENTRIES),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Parse the command line, measure, print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__)
    parser.add_argument("--sends", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="100000,500000,1000000")
    parser.add_argument("--max-entries", type=int, default=MAX_ENTRIES)
    args = parser.parse_args()
    checkpoints = [int(x) for x in args.checkpoints.split(",") if x]
    print(json.dumps(asyncio.run(measure(args.sends, checkpoints, args.max_entries))))


if __name__ == "__main__":
    main()
