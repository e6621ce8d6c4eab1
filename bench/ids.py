"""Message ids: ``str(uuid.uuid4())`` against ``catga.new_message_id()``.

Backs the comment in ``catga/_messages.py``. Part of ``python -m bench``; alone:
``python -m bench.ids [--quick]``.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable

from catga import new_message_id

from ._harness import Budget, Row, make_row, measure_sync, progress, render_rows

__all__ = ["rows"]


def _loop(make: Callable[[], str]) -> Callable[[int], int]:
    def run(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(n):
            make()
        return time.perf_counter_ns() - start

    return run


def _uuid4_str() -> str:
    return str(uuid.uuid4())


def _uuid4_hex() -> str:
    return uuid.uuid4().hex


def rows(budget: Budget) -> list[Row]:
    """Time one id of each kind (a function call each, so the loops cost the same)."""
    progress("ids: uuid4 vs new_message_id")
    cases = [
        ("str(uuid.uuid4())", _uuid4_str),
        ("uuid.uuid4().hex", _uuid4_hex),
        ("catga.new_message_id()", new_message_id),
    ]
    result = [
        make_row("ids", "make a message id", impl, None, measure_sync(_loop(make), budget), budget)
        for impl, make in cases
    ]
    ours = result[-1]["ns_per_call"]
    for row in result[:-1]:
        row["note"] = f"{row['ns_per_call'] / ours:.1f}x catga.new_message_id()"
    result[-1]["note"] = "random per-process prefix + counter"
    return result


def main() -> None:
    """Print the id rows as a table."""
    quick = "--quick" in sys.argv[1:]
    print(render_rows(rows(Budget(calls=100_000 if quick else 1_000_000))))


if __name__ == "__main__":
    main()
