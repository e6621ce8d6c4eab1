"""``python -m bench.redis_e2e [--quick]``: catga over Redis, end to end, against raw redis-py.

Starts its own ``redis-server`` (AOF everysec, noeviction: the durability the docs ask
for) on a free loopback port. Every case runs a consumer process and a producer
process (``python -m bench.redis_e2e --role ...``); this process only orchestrates.

* throughput: the producer sends ``n`` messages as fast as it can (catga: batches of
  100 through ``publish_many``; raw: pipelines of 100 ``XADD``, or one awaited ``XADD``
  at a time); the consumer handles them (catga: a ``Worker`` with a trivial handler;
  raw: ``XREADGROUP COUNT 100`` + one ``XACK`` per batch). Rate = messages handled /
  (last handled - producer start), wall clock shared by both processes.
* latency: the producer publishes one message per millisecond; latency = handler start
  - the message's send time. p50 / p99 over the run.

Each throughput case runs ``repeats`` times; the median rate is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from attrs import frozen

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
BATCH = 100
PAYLOAD = b"x" * 200  # about the size of a small catga envelope


# Message types ---------------------------------------------------------------

from catga import (  # noqa: E402 - after the constants the docstring talks about
    CatgaOptions,
    Event,
    HandlerRegistry,
    IdempotencyOptions,
    Mediator,
    QoS,
    Worker,
    handles,
)


@frozen(kw_only=True)
class Tick0(Event):
    """A QoS 0 event."""

    n: int
    sent: float
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


@frozen(kw_only=True)
class Tick1(Event):
    """A QoS 1 event."""

    n: int
    sent: float
    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class Tick2(Event):
    """A QoS 2 event."""

    n: int
    sent: float
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


TICKS: dict[int, type[Tick0 | Tick1 | Tick2]] = {0: Tick0, 1: Tick1, 2: Tick2}
ROUTE = "bench"


def config(url: str, prefix: str) -> Any:
    from catga_redis import RedisConfig

    return RedisConfig(url=url, prefix=prefix, block=0.1, claim_idle=30.0, retention=None)


# Consumers -------------------------------------------------------------------


class Tally:
    """What a consumer saw: counts, first/last handled time, latencies."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first = self.last = 0.0
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    def saw(self, sent: float) -> None:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        self.latencies.append(now - sent)
        if self.count >= self.n:
            self.done.set()

    def report(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "latencies": self.latencies,
        }


async def wait_done(tally: Tally, idle: float = 3.0) -> None:
    """Wait for all ``n``, or until nothing arrived for ``idle`` seconds (QoS 0 may drop)."""
    seen = -1
    while not tally.done.is_set() and tally.count != seen:
        seen = tally.count
        try:
            await asyncio.wait_for(tally.done.wait(), idle)
        except TimeoutError:
            continue


async def consume_raw(url: str, prefix: str, n: int) -> dict[str, Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    key = f"{prefix}:{ROUTE}"
    await client.xgroup_create(key, "g", id="0", mkstream=True)
    tally = Tally(n)
    print("READY", flush=True)
    while tally.count < n:
        reply = await client.xreadgroup("g", "c", {key: ">"}, count=BATCH, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        for _, fields in entries:
            tally.saw(float(fields[b"t"]))
        await client.xack(key, "g", *(entry_id for entry_id, _ in entries))
    await client.aclose()
    return tally.report()


async def consume_catga(url: str, prefix: str, n: int, qos: int) -> dict[str, Any]:
    from catga_redis import RedisIdempotencyStore, RedisTransport

    tally = Tally(n)
    tick = TICKS[qos]

    @handles(tick)
    async def on_tick(event: Tick0 | Tick1 | Tick2) -> None:
        tally.saw(event.sent)

    store = RedisIdempotencyStore(config(url, prefix))
    options = CatgaOptions(routes={tick: ROUTE}, idempotency=IdempotencyOptions(lease=30.0))
    async with RedisTransport(config(url, prefix)) as transport:
        mediator = Mediator(
            HandlerRegistry(on_tick), options=options, transport=transport, store=store
        )
        async with Worker(mediator, concurrency=256) as worker:
            print("READY", flush=True)
            await wait_done(tally)
            health = worker.health()
        await mediator.aclose()
    await store.aclose()
    return {
        **tally.report(),
        "handled": health.handled,
        "retried": health.retried,
        "deferred": health.deferred,
        "dead_lettered": health.dead_lettered,
    }


# Producers ---------------------------------------------------------------------


async def produce_raw(url: str, prefix: str, n: int, pipelined: bool) -> dict[str, Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    key = f"{prefix}:{ROUTE}"
    start = time.time()
    if pipelined:
        for first in range(0, n, BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(first, min(n, first + BATCH)):
                    pipe.xadd(key, {"t": repr(time.time()), "m": PAYLOAD})
                await pipe.execute()
    else:
        for _ in range(n):
            await client.xadd(key, {"t": repr(time.time()), "m": PAYLOAD})
    end = time.time()
    await client.aclose()
    return {"start": start, "end": end}


async def produce_catga(url: str, prefix: str, n: int, qos: int, paced: bool) -> dict[str, Any]:
    from catga_redis import RedisTransport

    tick = TICKS[qos]
    registry = HandlerRegistry()
    registry.add_types(tick)
    options = CatgaOptions(routes={tick: ROUTE})
    async with RedisTransport(config(url, prefix)) as transport:
        mediator = Mediator(registry, options=options, transport=transport)
        start = time.time()
        if paced:  # latency: one message per millisecond
            for i in range(n):
                await mediator.publish(tick(n=i, sent=time.time()))
                await asyncio.sleep(0.001)
        else:
            for first in range(0, n, BATCH):
                batch = [tick(n=i, sent=time.time()) for i in range(first, min(n, first + BATCH))]
                await mediator.publish_many(batch)
        end = time.time()
    return {"start": start, "end": end}


async def produce_raw_paced(url: str, prefix: str, n: int) -> dict[str, Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    key = f"{prefix}:{ROUTE}"
    start = time.time()
    for _ in range(n):
        await client.xadd(key, {"t": repr(time.time()), "m": PAYLOAD})
        await asyncio.sleep(0.001)
    end = time.time()
    await client.aclose()
    return {"start": start, "end": end}


async def run_role(args: argparse.Namespace) -> dict[str, Any]:
    impl, n, url, prefix = args.impl, args.n, args.url, args.prefix
    if args.role == "consumer":
        if impl == "raw":
            return await consume_raw(url, prefix, n)
        return await consume_catga(url, prefix, n, args.qos)
    if impl == "raw":
        if args.paced:
            return await produce_raw_paced(url, prefix, n)
        return await produce_raw(url, prefix, n, args.pipelined)
    return await produce_catga(url, prefix, n, args.qos, args.paced)


# Orchestration -------------------------------------------------------------------


def child(url: str, role: str, case: dict[str, Any], prefix: str, n: int) -> list[str]:
    args = [sys.executable, "-m", "bench.redis_e2e", "--role", role, "--url", url]
    args += ["--prefix", prefix, "--n", str(n), "--impl", case["impl"]]
    args += ["--qos", str(case.get("qos", 1))]
    args += ["--pipelined"] if case.get("pipelined") else []
    args += ["--paced"] if case.get("paced") else []
    return args


def run_case(url: str, case: dict[str, Any], n: int) -> dict[str, Any]:
    """Run one consumer and one producer process; return their reports merged."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    consumer = subprocess.Popen(
        child(url, "consumer", case, prefix, n), stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "READY":
        consumer.kill()
        raise RuntimeError(f"consumer for {case} did not start")
    producer = subprocess.run(
        child(url, "producer", case, prefix, n),
        capture_output=True,
        cwd=ROOT,
        text=True,
        check=True,
        timeout=300,
    )
    consumed = json.loads(consumer.stdout.read())
    consumer.wait(60)
    produced = json.loads(producer.stdout)
    return {**consumed, **produced}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


THROUGHPUT = [
    {"label": "raw redis-py, pipelined XADD(100) -> XREADGROUP(100)+XACK", "impl": "raw",
     "pipelined": True, "ceiling": True},
    {"label": "raw redis-py, sequential XADD -> XREADGROUP(100)+XACK", "impl": "raw"},
    {"label": "catga QoS 0 (publish_many -> Worker)", "impl": "catga", "qos": 0},
    {"label": "catga QoS 1 (publish_many -> Worker)", "impl": "catga", "qos": 1},
    {"label": "catga QoS 2 (publish_many -> Worker + Redis store)", "impl": "catga", "qos": 2},
]  # fmt: skip
LATENCY = [
    {"label": "raw redis-py XADD -> XREADGROUP", "impl": "raw", "paced": True},
    {"label": "catga QoS 0", "impl": "catga", "qos": 0, "paced": True},
    {"label": "catga QoS 1", "impl": "catga", "qos": 1, "paced": True},
    {"label": "catga QoS 2", "impl": "catga", "qos": 2, "paced": True},
]
TARGETS = {1: 0.60, 2: 0.35}


def measure(url: str, quick: bool) -> dict[str, Any]:
    """Run every throughput case once per round (so a round shares the machine's state)."""
    n, rounds, n_latency = (3_000, 1, 500) if quick else (20_000, 3, 3_000)
    runs: list[list[dict[str, Any]]] = [[] for _ in THROUGHPUT]
    for round_ in range(rounds):
        for i, case in enumerate(THROUGHPUT):
            got = run_case(url, case, n)
            got["rate"] = got["count"] / (got["last"] - got["start"])
            runs[i].append(got)
            print(f"round {round_ + 1}: {case['label']}: {got['rate']:,.0f} msg/s", file=sys.stderr)
    ceilings = [got["rate"] for got in runs[0]]
    rows = []
    for case, got in zip(THROUGHPUT, runs, strict=True):
        rates = [g["rate"] for g in got]
        shares = [g["rate"] / ceiling for g, ceiling in zip(got, ceilings, strict=True)]
        rows.append(
            {
                **case,
                "n": n,
                "rates": rates,
                "rate": statistics.median(rates),
                "of_ceiling": statistics.median(shares),
                "lost": max(n - g["count"] for g in got),
            }
        )
    latencies = []
    for case in LATENCY:
        got_latency = run_case(url, case, n_latency)
        values = got_latency["latencies"]
        latencies.append(
            {
                **case,
                "n": n_latency,
                "received": len(values),
                "p50_ms": percentile(values, 0.50) * 1000,
                "p99_ms": percentile(values, 0.99) * 1000,
            }
        )
    return {"throughput": rows, "latency": latencies, "targets": targets(rows, latencies)}


def targets(rows: list[dict[str, Any]], latencies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for qos, share in TARGETS.items():
        row = next(r for r in rows if r["impl"] == "catga" and r.get("qos") == qos)
        checked.append(
            {
                "target": f"QoS {qos} >= {share:.0%} of raw pipelined",
                "measured": f"{row['of_ceiling']:.0%}",
                "met": row["of_ceiling"] >= share,
            }
        )
    p50 = next(r["p50_ms"] for r in latencies if r["impl"] == "catga" and r.get("qos") == 1)
    checked.append(
        {"target": "QoS 1 p50 latency <= 1 ms", "measured": f"{p50:.2f} ms", "met": p50 <= 1.0}
    )
    return checked


def markdown(result: dict[str, Any], command: str, env: dict[str, Any]) -> str:
    lines = [
        "## redis end to end",
        "",
        "| case | msg/s (median) | runs | % of raw pipelined (median per round) | lost |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for r in result["throughput"]:
        runs = ", ".join(f"{x:,.0f}" for x in r["rates"])
        lines.append(
            f"| {r['label']} | {r['rate']:,.0f} | {runs} | {r['of_ceiling']:.0%} | {r['lost']} |"
        )
    lines += [
        "",
        "| latency case (1 msg/ms) | p50 ms | p99 ms | received |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in result["latency"]:
        lines.append(
            f"| {r['label']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['received']}/{r['n']} |"
        )
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['measured']} | {t['met']} |" for t in result["targets"]]
    lines += [
        "",
        f"{result['throughput'][0]['n']:,} messages per throughput run, every case once per "
        "round, the share of the raw ceiling taken within a round; producer and consumer are "
        "separate processes; redis-server with AOF everysec on loopback, its data dir on "
        "tmpfs (/dev/shm) so that other work's disk I/O does not add noise.",
        "",
        f"- command: `{command}`",
        f"- python: {env['python']}, redis-server: {env['redis_server']}",
        f"- machine: {env['machine']['cpus']} CPUs, {env['machine']['platform']}, "
        f"load average at start {env['machine']['loadavg_at_start']}",
        f"- date: {env['date']}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_e2e", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--no-save", action="store_true", help="print only; write no files")
    parser.add_argument("--role", choices=["consumer", "producer"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--qos", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pipelined", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        import structlog

        # stdout carries the report: logs go to stderr.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        profile = os.environ.get("CATGA_BENCH_PROFILE")  # a path: cProfile this role there
        if profile and args.role == "consumer":
            import cProfile

            with cProfile.Profile() as profiler:
                report = asyncio.run(run_role(args))
            profiler.dump_stats(profile)
        else:
            report = asyncio.run(run_role(args))
        print(json.dumps(report), flush=True)
        return 0

    from bench._harness import environment

    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    command = " ".join(["python -m bench.redis_e2e", *(sys.argv[1:] if argv is None else argv)])
    env = environment(command)
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()
    env["redis_server"] = next((v[2:] for v in version if v.startswith("v=")), "?")
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            result = measure(server.url, args.quick)
        finally:
            server.stop()
    text = markdown(result, command, env)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = env["date"].replace("-", "").replace(":", "")
        (RESULTS / f"redis-{stamp}.json").write_text(json.dumps({**env, **result}, indent=1) + "\n")
        (RESULTS / f"redis-{stamp}.md").write_text(text)
        print(f"wrote bench/results/redis-{stamp}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
