"""In-process dispatch: ``send`` and ``publish`` on the default chain, against a direct await.

Run as part of ``python -m bench``; ``section(quick)`` returns the whole
``inprocess`` section (dispatch, message creation, ids, serializer, RSS).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from catga import InMemoryIdempotencyStore, Mediator, Message, QoS, new_message_id

from . import ids, rss, serializer
from ._fixtures import (
    Ping,
    Ping0,
    Ping1,
    Ping2,
    Tick0,
    Tick0x3,
    Tick1,
    Tick1x3,
    Tick2,
    on_ping,
    registry,
)
from ._harness import Budget, Row, Section, Target, make_row, measure_async, measure_sync, progress

__all__ = ["TARGETS", "dispatch_rows", "message_rows", "section"]

CATGA = "catga"
DIRECT = "direct await handler(msg)"
STORE_BOUND = 100_000  # InMemoryIdempotencyStore's default max_entries
CHUNK = 1_000  # messages made (untimed) per timed loop; QoS 0 tasks drained per chunk
DUPLICATE_IDS = 20_000  # completed ids re-sent in the duplicate case (well under the bound)

TARGETS = [
    Target("send at QoS 1, default chain <= 2 us", "dispatch", "send", CATGA, 1, 2.0),
    Target("send at QoS 2, in-memory store <= 5 us", "dispatch", "send", CATGA, 2, 5.0),
]


Make = Callable[[int], Sequence[Any]]


async def _timed(
    call: Callable[[Any], Awaitable[Any]],
    make: Make,
    n: int,
    *,
    drain: Mediator | None = None,
    drain_timed: bool = False,
) -> int:
    """Await ``call(m)`` for ``n`` messages; return the ns spent in the timed loops alone.

    Messages are made ``CHUNK`` at a time between timed loops, so the live input
    stays small, as in a process handling a stream (a list of a million inputs
    would make every full GC pass slower and bill that to the framework).
    With ``drain``, the QoS 0 tasks the mediator scheduled are run after each
    chunk, inside the timing if ``drain_timed``.
    """
    total = 0
    for done in range(0, n, CHUNK):
        messages = make(min(CHUNK, n - done))
        start = time.perf_counter_ns()
        for message in messages:
            await call(message)
        if drain is not None and drain_timed:
            while drain.in_flight:  # noqa: ASYNC110 - the mediator exposes only a count
                await asyncio.sleep(0)
        total += time.perf_counter_ns() - start
        if drain is not None:
            while drain.in_flight:  # noqa: ASYNC110
                await asyncio.sleep(0)
    return total


def _same(cls: type[Message]) -> Make:
    """Make chunks of the same ``CHUNK`` messages every time (reused ids)."""
    shared = [cls() for _ in range(CHUNK)]
    return lambda k: shared[:k]


def _fresh(cls: type[Message]) -> Make:
    """Make chunks of new messages: ids never seen before."""
    return lambda k: [cls() for _ in range(k)]


async def dispatch_rows(budget: Budget) -> list[Row]:
    """Time a direct await, ``send`` at QoS 0/1/2 and ``publish`` to 1 and 3 handlers."""
    rows: list[Row] = []
    mediator = Mediator(registry())

    async def case(
        case: str, impl: str, qos: int | None, run: Callable[[int], Awaitable[int]], note: str
    ) -> None:
        progress(f"dispatch: {case} [{impl}] qos={qos}")
        samples = await measure_async(run, budget)
        rows.append(make_row("dispatch", case, impl, qos, samples, budget, note))

    # The baseline: no framework at all.
    async def direct(n: int) -> int:
        return await _timed(on_ping, _same(Ping1), n)

    await case("send", DIRECT, None, direct, "the handler coroutine awaited directly")

    # send at each QoS, the level set on the message class (the usual way).
    commands: list[tuple[int, type[Message], str]] = [
        (0, Ping0, "caller awaits the handler (in process, QoS 0 send is not fire-and-forget)"),
        (1, Ping1, "chain: logging, dead-letter, retry"),
    ]
    for qos, command_type, note in commands:

        async def send(n: int, cls: type[Message] = command_type) -> int:
            return await _timed(mediator.send, _same(cls), n)

        await case("send", CATGA, qos, send, note)

    async def send_override(n: int) -> int:
        send, level = mediator.send, QoS.AT_LEAST_ONCE
        return await _timed(lambda message: send(message, qos=level), _same(Ping), n)

    await case(
        "send, qos= per call", CATGA, 1, send_override,
        "send(msg, qos=QoS.AT_LEAST_ONCE) on a type without class QoS (a lambda in the loop)",
    )  # fmt: skip

    # QoS 2: the steady state of a long-running process first (store full, evicting).
    store = InMemoryIdempotencyStore(max_entries=STORE_BOUND)
    exactly_once = Mediator(registry(), store=store)
    progress(f"dispatch: filling the QoS 2 store to its bound ({STORE_BOUND:,} sends)")
    for _ in range(STORE_BOUND):
        await exactly_once.send(Ping2())

    async def send_new_ids(n: int) -> int:
        return await _timed(exactly_once.send, _fresh(Ping2), n)

    await case(
        "send", CATGA, 2, send_new_ids,
        f"distinct ids; store full at max_entries={STORE_BOUND:,}, evicting (steady state)",
    )  # fmt: skip
    await exactly_once.aclose()

    async def send_empty_store(n: int) -> int:
        fresh = Mediator(registry(), store=InMemoryIdempotencyStore(max_entries=n + 1))
        await fresh.send(Ping2())  # compose the chain before the clock starts
        elapsed = await _timed(fresh.send, _fresh(Ping2), n)
        await fresh.aclose()
        return elapsed

    await case(
        "send, empty store", CATGA, 2, send_empty_store,
        "distinct ids; a new mediator and store (max_entries > calls) per repeat: no eviction",
    )  # fmt: skip

    duplicates = Mediator(registry())
    seen = [Ping2() for _ in range(DUPLICATE_IDS)]
    for message in seen:
        await duplicates.send(message)
    cursor = 0

    def again(k: int) -> list[Ping2]:
        nonlocal cursor
        chunk = seen[cursor : cursor + k]
        cursor = (cursor + k) % len(seen)
        return chunk

    async def send_duplicate(n: int) -> int:
        return await _timed(duplicates.send, again, n)

    await case(
        "send, duplicate id", CATGA, 2, send_duplicate,
        f"{DUPLICATE_IDS:,} completed ids sent again: stored result decoded, handler not run",
    )  # fmt: skip
    await duplicates.aclose()

    # publish, awaited (QoS >= 1).
    awaited: list[tuple[int, type[Message], int]] = [(1, Tick1, 1), (1, Tick1x3, 3), (2, Tick2, 1)]
    for qos, event_type, fan_out in awaited:

        async def publish(n: int, cls: type[Message] = event_type, qos: int = qos) -> int:
            return await _timed(mediator.publish, _fresh(cls) if qos == 2 else _same(cls), n)

        handlers = "1 handler" if fan_out == 1 else f"{fan_out} handlers"
        note = "returns when every handler finished"
        if qos == 2:
            note += f"; distinct ids, default store (bound {STORE_BOUND:,})"
        await case(f"publish to {handlers}", CATGA, qos, publish, note)

    # publish at QoS 0: handlers are scheduled as tasks, the caller does not wait.
    scheduled: list[tuple[type[Message], int]] = [(Tick0, 1), (Tick0x3, 3)]
    for event_type, fan_out in scheduled:
        handlers = "1 handler" if fan_out == 1 else f"{fan_out} handlers"

        async def schedule(n: int, cls: type[Message] = event_type) -> int:
            return await _timed(mediator.publish, _same(cls), n, drain=mediator)

        async def complete(n: int, cls: type[Message] = event_type) -> int:
            return await _timed(mediator.publish, _same(cls), n, drain=mediator, drain_timed=True)

        await case(
            f"publish to {handlers}", CATGA, 0, schedule,
            f"call only: tasks scheduled; they run outside the timing after every {CHUNK:,} calls",
        )  # fmt: skip
        await case(
            f"publish to {handlers}, incl. completion", CATGA, 0, complete,
            f"timing includes running the scheduled tasks (drained every {CHUNK:,} calls)",
        )  # fmt: skip

    await mediator.aclose()
    return rows


def message_rows(budget: Budget) -> list[Row]:
    """Time making a message: with a generated id, and with an id the caller gives."""

    def generated(n: int) -> int:
        make = Ping1
        start = time.perf_counter_ns()
        for _ in range(n):
            make()
        return time.perf_counter_ns() - start

    def given(n: int) -> int:
        make = Ping1
        given_ids = [new_message_id() for _ in range(n)]
        gc.collect()
        start = time.perf_counter_ns()
        for message_id in given_ids:
            make(message_id=message_id)
        return time.perf_counter_ns() - start

    progress("message: construction")
    return [
        make_row(
            "message", "create a command", CATGA, None, measure_sync(generated, budget), budget,
            "Ping1(): new_message_id() and time.time() defaults included",
        ),
        make_row(
            "message", "create a command, id given", CATGA, None, measure_sync(given, budget),
            budget, "Ping1(message_id=...): a business key as the id",
        ),
    ]  # fmt: skip


def _rss_table(result: dict[str, Any]) -> str:
    lines = [
        f"Peak RSS over {result['sends']:,} QoS 2 sends with distinct ids, one mediator, "
        f"InMemoryIdempotencyStore(max_entries={result['max_entries']:,}) "
        f"(separate process; ru_maxrss; {result['baseline_mib']} MiB before the first send):",
        "",
        "| sends | peak RSS (MiB) | store size | us/send (incl. making the message) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c['sends']:,} | {c['peak_rss_mib']} | {c['store_size']:,} | {c['us_per_send']} |"
        for c in result["checkpoints"]
    ]
    lines += [
        "",
        f"Growth after the store reached its bound: {result['growth_after_bound_mib']} MiB "
        f"({'flat' if result['flat'] else 'NOT flat'}: at most {rss.FLAT_SLACK_MIB:g} MiB "
        f"allowed); over the second half of the run: {result['growth_second_half_mib']} MiB. "
        "Store size at the end: "
        f"{result['final_store_size']:,} (bound {result['max_entries']:,}).",
    ]
    return "\n".join(lines)


def _targets_table(section: Section) -> str:
    lines = ["| target | measured (us) | met |", "| --- | ---: | --- |"]
    for target in section.targets:
        checked = target.check(section.rows)
        measured = checked["measured_us"]
        lines.append(
            f"| {target.label} | {'-' if measured is None else f'{measured:.3f}'} | "
            f"{'yes' if checked['met'] else 'NO'} |"
        )
    return "\n".join(lines)


def section(quick: bool) -> Section:
    """Run the whole in-process section: dispatch, messages, ids, serializer, RSS."""
    budget = Budget(calls=20_000, repeats=5) if quick else Budget(calls=100_000, repeats=9)
    # First, while this process is small: a child's ru_maxrss starts at its parent's RSS.
    progress("rss: separate process")
    memory = rss.run(quick)
    rows = asyncio.run(dispatch_rows(budget))
    rows += message_rows(budget)
    rows += ids.rows(budget)
    rows += serializer.rows(Budget(calls=budget.calls // 4, repeats=budget.repeats))
    result = Section("inprocess", rows, TARGETS, extra={"rss": memory})
    result.tables = [_targets_table(result), _rss_table(memory)]
    return result
