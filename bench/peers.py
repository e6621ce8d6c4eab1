"""In-process peers: mediatr (Python) and python-cqrs doing catga's ``send`` and ``publish`` work.

``python -m bench --section peers``. Every implementation does the same work with
the same method as ``bench/inprocess.py`` (the same ``_timed`` loop, ``CHUNK``
inputs made before the clock starts and reused, the same budget):

* ``send``: a command whose handler returns a value (catga: ``Ping1`` at QoS 1 with
  the default chain, logging + dead-letter + retry; mediatr: ``send_async`` of a plain
  request to a function handler, bare and with three pass-through behaviours;
  python-cqrs: ``RequestMediator.send`` of a ``Request[Response]`` built by
  ``cqrs.bootstrap.requests.bootstrap`` with a ``di`` container and its default
  middleware, logging);
* ``publish to 1 / 3 handlers``: an event to 1 and 3 do-nothing handlers, awaited
  (catga: ``publish`` at QoS 1; python-cqrs: ``EventMediator.send`` built by
  ``cqrs.bootstrap.events.bootstrap``; mediatr has no notifications: no row).

Implementations of one piece of work are measured interleaved: after one warm-up
each, every repeat times each implementation once in turn, so drifts of the shared
machine hit them alike; a ratio is the median of the per-repeat ratios.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

from catga import Mediator

from ._fixtures import Ping1, Tick1, Tick1x3, registry
from ._harness import Budget, Row, Section, make_row, progress
from .inprocess import CHUNK, _timed

__all__ = ["TARGETS", "rows", "section"]

CATGA, MEDIATR, MEDIATR_B, CQRS = "catga", "mediatr", "mediatr + 3 behaviours", "python-cqrs"

# (work, peer, at most catga/peer): catga per call must be <= limit x the peer's.
TARGETS = [
    ("send", MEDIATR, 1.0),
    ("send", CQRS, 0.2),
]

Run = Callable[[int], Awaitable[int]]


def _same(make: Callable[[], Any]) -> Callable[[int], list[Any]]:
    shared = [make() for _ in range(CHUNK)]
    return lambda k: shared[:k]


# mediatr (Python): handlers and behaviours live in module-level registries. --------------


def _mediatr() -> dict[str, Run]:
    from mediatr import Mediator as MediatrMediator

    class MPing:
        """A mediatr request (any class)."""

    class MPingB:
        """The same, with three behaviours registered for it."""

    async def on_mping(request: MPing) -> int:
        return 1

    async def on_mping_b(request: MPingB) -> int:
        return 1

    # mediatr reads the request type from the first parameter's annotation; with
    # ``from __future__ import annotations`` that is a string, so set the real type.
    on_mping.__annotations__["request"] = MPing
    on_mping_b.__annotations__["request"] = MPingB
    MediatrMediator.register_handler(on_mping)
    MediatrMediator.register_handler(on_mping_b)

    def behaviour() -> Callable[..., Awaitable[Any]]:
        async def passthrough(request: MPingB, next: Callable[[], Awaitable[Any]]) -> Any:
            return await next()

        passthrough.__annotations__["request"] = MPingB
        return passthrough

    for _ in range(3):
        MediatrMediator.register_behavior(behaviour())
    mediator = MediatrMediator()

    async def bare(n: int) -> int:
        return await _timed(mediator.send_async, _same(MPing), n)

    async def with_behaviours(n: int) -> int:
        return await _timed(mediator.send_async, _same(MPingB), n)

    return {MEDIATR: bare, MEDIATR_B: with_behaviours}


# python-cqrs: bootstrap with a ``di`` container, the documented minimal setup. ------------


def _cqrs() -> dict[str, Run]:
    import cqrs
    import di
    from cqrs.bootstrap import events as events_bootstrap
    from cqrs.bootstrap import requests as requests_bootstrap

    class PingResult(cqrs.Response):
        value: int

    class PingCommand(cqrs.Request[PingResult]):
        pass

    class PingHandler(cqrs.RequestHandler[PingCommand, PingResult]):
        async def handle(self, request: PingCommand) -> PingResult:
            return PingResult(value=1)

    class Tick(cqrs.DomainEvent):
        pass

    class Tick3(cqrs.DomainEvent):
        pass

    class OnTickA(cqrs.EventHandler[Tick]):
        async def handle(self, event: Tick) -> None:
            return None

    class OnTick3A(cqrs.EventHandler[Tick3]):
        async def handle(self, event: Tick3) -> None:
            return None

    class OnTick3B(cqrs.EventHandler[Tick3]):
        async def handle(self, event: Tick3) -> None:
            return None

    class OnTick3C(cqrs.EventHandler[Tick3]):
        async def handle(self, event: Tick3) -> None:
            return None

    def commands(mapper: Any) -> None:
        mapper.bind(PingCommand, PingHandler)

    def events(mapper: Any) -> None:
        mapper.bind(Tick, OnTickA)
        for handler in (OnTick3A, OnTick3B, OnTick3C):
            mapper.bind(Tick3, handler)

    requests = requests_bootstrap.bootstrap(di_container=di.Container(), commands_mapper=commands)
    event_mediator = events_bootstrap.bootstrap(di_container=di.Container(), events_mapper=events)

    async def send(n: int) -> int:
        return await _timed(requests.send, _same(PingCommand), n)

    async def publish1(n: int) -> int:
        return await _timed(event_mediator.send, _same(Tick), n)

    async def publish3(n: int) -> int:
        return await _timed(event_mediator.send, _same(Tick3), n)

    return {"send": send, "publish to 1 handler": publish1, "publish to 3 handlers": publish3}


async def _interleaved(runs: dict[str, Run], budget: Budget) -> dict[str, list[float]]:
    """Warm each up, then time each once per repeat, in turn; return ns/call per repeat."""
    for run in runs.values():
        gc.collect()
        await run(budget.warmup_calls)
    samples: dict[str, list[float]] = {impl: [] for impl in runs}
    for _ in range(budget.repeats):
        for impl, run in runs.items():
            gc.collect()
            samples[impl].append(await run(budget.calls) / budget.calls)
    gc.collect()
    return samples


NOTES = {
    CATGA: "QoS 1, default chain (logging, dead-letter, retry)",
    MEDIATR: "send_async, function handler, no behaviours",
    MEDIATR_B: "send_async, function handler, 3 pass-through behaviours",
    CQRS: "bootstrap(di.Container()), default LoggingMiddleware",
}


async def measure(budget: Budget) -> tuple[list[Row], list[dict[str, Any]]]:
    """Return the rows and the ratios (catga per call / peer per call, per repeat)."""
    mediator = Mediator(registry())
    mediatr_runs = _mediatr()
    cqrs_runs = _cqrs()

    async def catga_send(n: int) -> int:
        return await _timed(mediator.send, _same(Ping1), n)

    async def catga_publish1(n: int) -> int:
        return await _timed(mediator.publish, _same(Tick1), n)

    async def catga_publish3(n: int) -> int:
        return await _timed(mediator.publish, _same(Tick1x3), n)

    works: dict[str, dict[str, Run]] = {
        "send": {
            CATGA: catga_send,
            MEDIATR: mediatr_runs[MEDIATR],
            MEDIATR_B: mediatr_runs[MEDIATR_B],
            CQRS: cqrs_runs["send"],
        },
        "publish to 1 handler": {CATGA: catga_publish1, CQRS: cqrs_runs["publish to 1 handler"]},
        "publish to 3 handlers": {
            CATGA: catga_publish3,
            CQRS: cqrs_runs["publish to 3 handlers"],
        },
    }
    rows: list[Row] = []
    ratios: list[dict[str, Any]] = []
    for work, runs in works.items():
        progress(f"peers: {work} ({', '.join(runs)})")
        samples = await _interleaved(runs, budget)
        for impl, got in samples.items():
            note = NOTES[impl]
            if work != "send" and impl == CATGA:
                note = "publish at QoS 1, awaited, default chain"
            elif work != "send":
                note = "EventMediator.send, bootstrap(di.Container())"
            rows.append(
                make_row("peers", work, impl, 1 if impl == CATGA else None, got, budget, note)
            )
        for impl, got in samples.items():
            if impl == CATGA:
                continue
            per_repeat = [c / p for c, p in zip(samples[CATGA], got, strict=True)]
            ratios.append(
                {
                    "work": work,
                    "peer": impl,
                    "catga_over_peer": round(statistics.median(per_repeat), 3),
                    "catga_over_peer_min": round(
                        min(samples[CATGA]) / min(got), 3
                    ),  # fastest repeat of each
                    "peer_over_catga": round(
                        statistics.median(got) / statistics.median(samples[CATGA]), 2
                    ),
                }
            )
    await mediator.aclose()
    return rows, ratios


def check_targets(ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return each target with its measured ratio and whether it is met."""
    checked = []
    for work, peer, limit in TARGETS:
        found = next((r for r in ratios if (r["work"], r["peer"]) == (work, peer)), None)
        measured = None if found is None else found["catga_over_peer"]
        checked.append(
            {
                "target": f"catga {work} QoS 1 <= {limit:g}x {peer}",
                "limit": limit,
                "measured": measured,
                "met": measured is not None and measured <= limit,
            }
        )
    return checked


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def ratio_table(ratios: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    lines = [
        "| work | peer | catga / peer (median of per-repeat ratios) | fastest / fastest | "
        "peer is Nx slower |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['work']} | {r['peer']} | {r['catga_over_peer']:.3f}x | "
        f"{r['catga_over_peer_min']:.3f}x | {r['peer_over_catga']:.1f}x |"
        for r in ratios
    ]
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [
        f"| {t['target']} | {_x(t['measured'])} | {'yes' if t['met'] else 'NO'} |" for t in targets
    ]
    return "\n".join(lines)


def section(quick: bool) -> Section:
    """Run the peers section."""
    budget = Budget(calls=20_000, repeats=5) if quick else Budget(calls=100_000, repeats=9)
    rows_, ratios = asyncio.run(measure(budget))
    targets = check_targets(ratios)
    return Section(
        "peers",
        rows_,
        extra={"ratios": ratios, "ratio_targets": targets},
        tables=[ratio_table(ratios, targets)],
    )


def rows(quick: bool) -> list[Row]:
    """The rows alone (for callers that want only the table)."""
    return section(quick).rows
