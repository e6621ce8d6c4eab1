"""Cost growth: consumer processes, offered rate, memory with messages in flight.

``python -m bench --section growth``. catga's worker over Redis and NATS (the backends'
bench configs), producer and consumers in separate processes:

* consumers: QoS 1 throughput with 1 and with 2 consumer processes in one group
  (Redis consumer group / one durable NATS pull consumer). The machine has 2 cores,
  shared by the producer, the consumers and the broker: a second consumer cannot
  double anything here; the row shows what a second process costs or gains.
* offered rate: QoS 1 latency (p50/p99/p999) as the producer's rate rises to past
  saturation. The producer follows a schedule (message i is due at start + i/rate, sent
  with ``publish_many`` of whatever is due) and latency = handler start - the *scheduled*
  time, so a producer or consumer falling behind shows as latency (no coordinated
  omission). The achieved rate is reported beside it.
* memory: peak RSS of a worker process holding 10,000 QoS 1 deliveries in flight at once
  (concurrency 10,000; every handler waits on a gate until all 10,000 are running), against
  the same process idle after start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from attrs import evolve, frozen

from catga import CatgaOptions, Event, HandlerRegistry, IdempotencyOptions, Mediator, QoS, Worker
from catga import handles as handles_

from ._harness import Section, progress

__all__ = ["section"]

ROOT = Path(__file__).resolve().parents[1]
BATCH = 100
IDLE = 1.5  # a consumer stops after this long without a message (once it has seen one)
IN_FLIGHT = 10_000
HOLD_WAIT = 20.0  # seconds the memory case waits for all IN_FLIGHT deliveries to be running


@frozen(kw_only=True)
class Grow0(Event):
    n: int
    sent: float
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


@frozen(kw_only=True)
class Grow1(Event):
    n: int
    sent: float
    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class Grow2(Event):
    n: int
    sent: float
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


TYPES: dict[int, type[Event]] = {0: Grow0, 1: Grow1, 2: Grow2}
ROUTES = {Grow0: "grow0", Grow1: "grow1", Grow2: "grow2"}
CONCURRENCY = {"redis": 256, "nats": 100}  # as the backends' own bench consumers


# Transports (the backends' bench configs) ---------------------------------------------


def _transport(backend: str, url: str, prefix: str, in_flight: int | None = None) -> Any:
    if backend == "redis":
        from catga_redis import RedisTransport

        from .redis_e2e import config

        cfg = config(url, prefix)
        if in_flight:
            cfg = evolve(cfg, read_batch=1_000)
        return RedisTransport(cfg), cfg
    from catga_nats import NatsTransport

    from .nats_e2e import nats_config

    cfg = nats_config(url, prefix)
    if in_flight:
        cfg = evolve(cfg, max_in_flight=in_flight, fetch_batch=1_000)
    return NatsTransport(cfg), cfg


def _store(backend: str, cfg: Any, transport: Any) -> Any:
    if backend == "redis":
        from catga_redis import RedisIdempotencyStore

        return RedisIdempotencyStore(cfg)
    from catga_nats import NatsIdempotencyStore

    return NatsIdempotencyStore(cfg, client=transport.client)


def _rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB: current and peak resident memory.

    VmHWM rather than ``ru_maxrss``: a child's ``ru_maxrss`` starts from its parent's
    RSS at the fork and survives the exec, VmHWM belongs to this process image only.
    """
    found = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in found:
                found[key] = int(line.split()[1]) / 1024
    if not found["VmHWM:"]:
        found["VmHWM:"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return round(found["VmRSS:"], 1), round(found["VmHWM:"], 1)


# Roles ----------------------------------------------------------------------------------


async def consume(backend: str, url: str, prefix: str, qos: int, expect: int) -> dict[str, Any]:
    """Handle until ``expect`` messages or ``IDLE`` seconds without one; report what was seen."""
    seen: dict[str, Any] = {"count": 0, "first": 0.0, "last": 0.0, "latencies": []}
    done = asyncio.Event()

    @handles_(TYPES[qos])
    async def on_grow(event: Any) -> None:
        now = time.time()
        if not seen["count"]:
            seen["first"] = now
        seen["count"] += 1
        seen["last"] = now
        seen["latencies"].append(now - event.sent)
        if seen["count"] >= expect:
            done.set()

    transport, cfg = _transport(backend, url, prefix)
    async with transport:
        store = _store(backend, cfg, transport)
        options = CatgaOptions(routes=ROUTES, idempotency=IdempotencyOptions(lease=30.0))
        mediator = Mediator(
            HandlerRegistry(on_grow), options=options, transport=transport, store=store
        )
        worker = Worker(mediator, concurrency=CONCURRENCY[backend], routes=[ROUTES[TYPES[qos]]])
        async with worker:
            print("READY", flush=True)
            # The orchestrator writes a line once the producer finished: then stop after
            # IDLE seconds without a message (a consumer of several may get none at all).
            loop = asyncio.get_running_loop()
            produced = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
            count = -1
            while not done.is_set() and (count != seen["count"] or not produced.done()):
                count = seen["count"]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done.wait()), IDLE)
        await mediator.aclose()
        if backend == "redis":
            await store.aclose()
    return seen


async def produce(
    backend: str, url: str, prefix: str, qos: int, n: int, rate: float | None, single: bool = False
) -> dict[str, Any]:
    """Send ``n`` messages: as fast as possible (in batches, or one awaited ``publish`` at a
    time with ``single``), or on a schedule at ``rate``/s."""
    kind = TYPES[qos]
    registry = HandlerRegistry()
    registry.add_types(Grow0, Grow1, Grow2)
    transport, _ = _transport(backend, url, prefix)
    async with transport:
        mediator = Mediator(registry, options=CatgaOptions(routes=ROUTES), transport=transport)
        start = time.time()
        if single:
            for i in range(n):
                await mediator.publish(kind(n=i, sent=time.time()))  # type: ignore[call-arg]
        elif rate is None:
            for first in range(0, n, BATCH):
                now = time.time()
                await mediator.publish_many(
                    [kind(n=i, sent=now) for i in range(first, min(n, first + BATCH))]  # type: ignore[call-arg]
                )
        else:
            sent = 0
            while sent < n:
                due = min(n, int((time.time() - start) * rate) + 1)
                if due <= sent:
                    await asyncio.sleep(max(0.0, start + sent / rate - time.time()))
                    continue
                batch = [kind(n=i, sent=start + i / rate) for i in range(sent, due)]  # type: ignore[call-arg]
                if len(batch) == 1:
                    await mediator.publish(batch[0])
                else:
                    await mediator.publish_many(batch)
                sent = due
        end = time.time()
        await mediator.aclose()
    return {"start": start, "end": end}


async def hold(backend: str, url: str, prefix: str, n: int) -> dict[str, Any]:
    """Start a worker, measure its RSS, then let ``n`` deliveries pile up in flight; report."""
    gate = asyncio.Event()
    state = {"running": 0, "max_running": 0, "handled": 0}
    all_running = asyncio.Event()
    finished = asyncio.Event()

    @handles_(Grow1)
    async def on_grow(event: Grow1) -> None:
        state["running"] += 1
        state["max_running"] = max(state["max_running"], state["running"])
        if state["running"] >= n:
            all_running.set()
        await gate.wait()
        state["running"] -= 1
        state["handled"] += 1
        if state["handled"] >= n:
            finished.set()

    transport, _ = _transport(backend, url, prefix, in_flight=n)
    async with transport:
        mediator = Mediator(
            HandlerRegistry(on_grow), options=CatgaOptions(routes=ROUTES), transport=transport
        )
        idle_rss, _ = _rss_mib()
        async with Worker(mediator, concurrency=n, routes=[ROUTES[Grow1]]):
            await asyncio.sleep(0.5)
            started_rss, _ = _rss_mib()
            print("READY", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_running.wait(), HOLD_WAIT)
            held_rss, peak = _rss_mib()
            took = time.monotonic()
            gate.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), 120)
            drain_s = time.monotonic() - took
            _, peak = _rss_mib()
        await mediator.aclose()
    return {
        "rss_before_worker_mib": idle_rss,
        "rss_worker_started_mib": started_rss,
        "rss_in_flight_mib": held_rss,
        "peak_rss_mib": peak,
        "max_in_flight": state["max_running"],
        "handled": state["handled"],
        "drain_s": round(drain_s, 2),
    }


# Orchestration ----------------------------------------------------------------------------


def _args(role: str, backend: str, url: str, prefix: str, qos: int, n: int) -> list[str]:
    args = [sys.executable, "-m", "bench.growth", "--role", role, "--backend", backend]
    return [*args, "--url", url, "--prefix", prefix, "--qos", str(qos), "--n", str(n)]


def _start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        proc.kill()
        raise RuntimeError(f"{' '.join(args[3:])}: did not start")
    return proc


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate("produced\n", timeout=600)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _run(
    backend: str,
    url: str,
    n: int,
    consumers: int,
    rate: float | None,
    qos: int = 1,
    single: bool = False,
) -> dict[str, Any]:
    prefix = f"g{uuid.uuid4().hex[:8]}"
    procs = [_start(_args("consumer", backend, url, prefix, qos, n)) for _ in range(consumers)]
    producer = _args("producer", backend, url, prefix, qos, n)
    if rate is not None:
        producer += ["--rate", str(rate)]
    if single:
        producer += ["--single"]
    sent = json.loads(
        subprocess.run(producer, capture_output=True, cwd=ROOT, text=True, check=True, timeout=600)
        .stdout.strip()
        .splitlines()[-1]
    )
    seen = [_report(p) for p in procs]
    count = sum(s["count"] for s in seen)
    last = max(s["last"] for s in seen)
    latencies = [x for s in seen for x in s["latencies"]]
    return {
        "sent": n,
        "received": count,
        "per_consumer": [s["count"] for s in seen],
        "msgs_per_s": round(count / max(last - sent["start"], 1e-9)),
        "publish_msgs_per_s": round(n / max(sent["end"] - sent["start"], 1e-9)),
        "latencies": latencies,
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [float("nan")]

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999)}


def section(quick: bool, urls: dict[str, str]) -> Section:
    """Run the growth cases on every backend in ``urls``."""
    n = 3_000 if quick else 20_000
    seconds = 1.0 if quick else 3.0
    rates = {
        "redis": [1_000, 5_000, 10_000, 20_000, 40_000],
        "nats": [1_000, 3_000, 6_000, 12_000, 24_000],
    }
    rows: list[dict[str, Any]] = []
    for backend in ("redis", "nats"):
        if backend not in urls:
            continue
        url = urls[backend]
        for consumers in (1, 2):
            progress(f"growth {backend}: QoS 1, {consumers} consumer process(es), {n} messages")
            got = _run(backend, url, n, consumers, None)
            rows.append(
                {"group": "growth", "backend": backend, "case": "consumers", "impl": "catga",
                 "qos": 1, "consumers": consumers, "msgs_per_s": got["msgs_per_s"],
                 "sent": n, "received": got["received"], "per_consumer": got["per_consumer"]}
            )  # fmt: skip
        for rate in rates[backend]:
            total = int(rate * seconds)
            progress(f"growth {backend}: QoS 1 offered {rate:,}/s for {seconds:g} s")
            got = _run(backend, url, total, 1, rate)
            values = got["latencies"][total // 10 :]
            rows.append(
                {"group": "growth", "backend": backend, "case": "offered rate", "impl": "catga",
                 "qos": 1, "offered_per_s": rate, "msgs_per_s": got["msgs_per_s"],
                 "sent": total, "received": got["received"], **_percentiles(values)}
            )  # fmt: skip
        progress(f"growth {backend}: peak RSS with {IN_FLIGHT:,} deliveries in flight")
        prefix = f"r{uuid.uuid4().hex[:8]}"
        holder = _start(_args("hold", backend, url, prefix, 1, IN_FLIGHT))
        subprocess.run(
            _args("producer", backend, url, prefix, 1, IN_FLIGHT),
            capture_output=True, cwd=ROOT, text=True, check=True, timeout=600,
        )  # fmt: skip
        held = _report(holder)
        rows.append(
            {"group": "growth", "backend": backend, "case": "memory", "impl": "catga", "qos": 1,
             "in_flight": IN_FLIGHT, **held}
        )  # fmt: skip
    result = Section("growth", rows)  # type: ignore[arg-type]
    result.tables = [render(rows)]
    return result


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown tables of the growth rows."""
    lines = [
        "Throughput with 1 and 2 consumer processes (QoS 1, one group; the machine has 2 "
        "cores, shared by producer, consumers and broker):",
        "",
        "| backend | consumers | msg/s | handled per consumer | received/sent |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    lines += [
        f"| {r['backend']} | {r['consumers']} | {r['msgs_per_s']:,} | "
        f"{', '.join(f'{c:,}' for c in r['per_consumer'])} | {r['received']}/{r['sent']} |"
        for r in rows
        if r["case"] == "consumers"
    ]
    lines += [
        "",
        "QoS 1 latency as the offered rate rises (scheduled send time -> handler start; one "
        "consumer process):",
        "",
        "| backend | offered msg/s | achieved msg/s | p50 ms | p99 ms | p999 ms | received/sent |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['backend']} | {r['offered_per_s']:,} | {r['msgs_per_s']:,} | {r['p50_ms']:.3f} | "
        f"{r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['received']}/{r['sent']} |"
        for r in rows
        if r["case"] == "offered rate"
    ]
    lines += [
        "",
        f"Memory of a worker process with {IN_FLIGHT:,} QoS 1 deliveries in flight at once "
        "(VmRSS; peak = VmHWM; every handler waits on a gate until all are running, at most "
        f"{HOLD_WAIT:g} s; 'max in flight' below {IN_FLIGHT:,} means the worker never got "
        "them all at once):",
        "",
        "| backend | before the worker MiB | worker started MiB | in flight MiB | peak MiB | "
        "max in flight | KiB per delivery | drain s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["case"] != "memory":
            continue
        held = r["max_in_flight"] >= r["in_flight"]
        growth_kib = (r["rss_in_flight_mib"] - r["rss_worker_started_mib"]) * 1024
        per = f"{growth_kib / r['max_in_flight']:.1f}" if held else "- (not all held)"
        lines.append(
            f"| {r['backend']} | {r['rss_before_worker_mib']} | {r['rss_worker_started_mib']} | "
            f"{r['rss_in_flight_mib']} | {r['peak_rss_mib']} | {r['max_in_flight']:,} | "
            f"{per} | {r['drain_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    parser.add_argument("--role", choices=["consumer", "producer", "hold"], required=True)
    parser.add_argument("--backend", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--single", action="store_true")
    args = parser.parse_args(argv)
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.role == "consumer":
        report = asyncio.run(consume(args.backend, args.url, args.prefix, args.qos, args.n))
    elif args.role == "producer":
        report = asyncio.run(
            produce(args.backend, args.url, args.prefix, args.qos, args.n, args.rate, args.single)
        )
    else:
        report = asyncio.run(hold(args.backend, args.url, args.prefix, args.n))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
