"""End-to-end sections ``redis`` and ``nats``: catga, the raw client and FastStream, same rounds.

The case runners are the backends' own bench modules (``bench/redis_e2e.py``,
``bench/nats_e2e.py``: producer and consumer in separate processes, catga's worker
and its raw-client ceilings) and ``bench/faststream_e2e.py`` (the FastStream peer).
This module only starts the servers, runs every case of a backend once per
round, in the same order each round, so one round shares the machine's state, and
turns the reports into rows of one shape:

```
{"group": "e2e", "backend": "redis", "case": "throughput", "impl": "catga", "qos": 1,
 "primitive": "stream", "publish": "batch", "msgs_per_s": 14000, "runs": [...],
 "pct_of_raw": 61.0, "x_faststream": 4.9, "p50_ms": null, "p99_ms": null,
 "p999_ms": null, "sent": 20000, "received": 20000, "note": "..."}
```

``pct_of_raw`` and ``x_faststream`` are medians of the per-round ratios against
the case doing the same work on the same transport primitive.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import faststream_e2e
from ._harness import Section, progress

__all__ = ["nats_section", "redis_section", "servers"]

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def servers(which: tuple[str, ...] = ("redis", "nats")) -> Iterator[dict[str, str]]:
    """Start redis-server / nats-server -js on free loopback ports (data on tmpfs); yield URLs."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import NatsServer, RedisServer

    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(
        prefix="catga-bench-", dir=shm if shm.is_dir() else None
    ) as tmp:
        started: list[Any] = []
        urls: dict[str, str] = {}
        try:
            for name, kind in (("redis", RedisServer), ("nats", NatsServer)):
                if name in which:
                    server = kind(Path(tmp) / name)
                    server.start()
                    started.append(server)
                    urls[name] = server.url
            yield urls
        finally:
            for server in started:
                server.stop()


def _pct(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return at(0.50), at(0.99), at(0.999)


def _row(backend: str, case: str, impl: str, qos: int | None, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": "e2e",
        "backend": backend,
        "case": case,
        "impl": impl,
        "qos": qos,
        "primitive": "",
        "publish": "",
        "msgs_per_s": None,
        "runs": [],
        "pct_of_raw": None,
        "x_faststream": None,
        "p50_ms": None,
        "p99_ms": None,
        "p999_ms": None,
        "sent": None,
        "received": None,
        "note": "",
    }
    row.update(fields)
    return row


Case = dict[str, Any]  # key, impl, qos, primitive, publish, note, run (() -> (rate, received))


def _rounds(backend: str, cases: list[Case], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Run every case once per round; return each case's per-round results."""
    results: dict[str, list[dict[str, Any]]] = {case["key"]: [] for case in cases}
    for round_ in range(rounds):
        for case in cases:
            got = case["run"]()
            results[case["key"]].append(got)
            progress(
                f"{backend} round {round_ + 1}/{rounds}: {case['key']}: "
                f"{got['rate']:,.0f} msg/s ({got['received']}/{got['sent']})"
            )
    return results


def _throughput_rows(
    backend: str,
    cases: list[Case],
    results: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        got = results[case["key"]]
        rates = [g["rate"] for g in got]
        fields: dict[str, Any] = {
            "primitive": case["primitive"],
            "publish": case["publish"],
            "msgs_per_s": round(statistics.median(rates)),
            "runs": [round(r) for r in rates],
            "sent": got[0]["sent"],
            "received": min(g["received"] for g in got),
            "note": case["note"],
        }
        for name, ref in (("pct_of_raw", case.get("raw")), ("x_faststream", case.get("peer"))):
            if ref is None:
                continue
            per_round = [g["rate"] / r["rate"] for g, r in zip(got, results[ref], strict=True)]
            value = statistics.median(per_round)
            fields[name] = round(100 * value, 1) if name == "pct_of_raw" else round(value, 2)
            fields[f"{name}_vs"] = ref
        rows.append(
            _row(backend, "throughput", case["impl"], case.get("qos"), key=case["key"], **fields)
        )
    return rows


FS_NOTES = {
    "redis-stream": "StreamSub(group, consumer, max_records=100), ack after the handler",
    "redis-pubsub": "subscriber(channel)",
    "nats-core": "core subscriber",
    "nats-js": "JetStream PullSub(batch_size=100), ack after the handler",
}


def _faststream_case(
    fs_case: str, url: str, n: int, mode: str, primitive: str, raw: str | None
) -> Case:
    def run() -> dict[str, Any]:
        got = faststream_e2e.throughput(fs_case, url, n, mode)
        return {"rate": got["msgs_per_s"], "received": got["received"], "sent": n}

    publish = "pipeline of 100" if mode == "batch" else "one awaited at a time"
    if fs_case == "nats-js":
        publish = "100 in flight" if mode == "batch" else "one awaited at a time"
    elif fs_case == "nats-core":
        publish = "publish loop"
    return {
        "key": f"faststream-{fs_case}-{mode}",
        "impl": "faststream",
        "qos": None,
        "primitive": primitive,
        "publish": publish,
        "raw": raw,
        "note": FS_NOTES[fs_case],
        "run": run,
    }


def _faststream_latency(backend: str, fs_case: str, url: str, n: int, primitive: str) -> dict:
    got = faststream_e2e.latency(fs_case, url, n)
    return _row(
        backend, "latency", "faststream", None,
        primitive=primitive, p50_ms=got["p50_ms"], p99_ms=got["p99_ms"],
        p999_ms=got["p999_ms"], sent=n, received=got["received"],
        note="1 msg/ms, separate processes; handler start - send time",
    )  # fmt: skip


def _catga_single_case(backend: str, url: str, n: int, primitive: str, **meta: Any) -> Case:
    """catga QoS 1, one awaited ``publish`` at a time (``bench/growth.py``'s roles)."""
    from . import growth

    def run() -> dict[str, Any]:
        got = growth._run(backend, url, n, 1, None, qos=1, single=True)
        return {"rate": got["msgs_per_s"], "received": got["received"], "sent": n}

    return {
        "key": "catga-qos1-single", "impl": "catga", "qos": 1, "primitive": primitive,
        "publish": "one awaited publish at a time", "run": run,
        "note": "publish per message (bench/growth.py roles) -> Worker", **meta,
    }  # fmt: skip


# Redis ------------------------------------------------------------------------------------


def redis_section(quick: bool, url: str) -> Section:
    """Raw redis-py, catga QoS 0/1/2 and FastStream over one redis-server, in rounds."""
    from . import redis_e2e

    n, rounds, n_latency = (3_000, 1, 500) if quick else (20_000, 3, 3_000)
    labels = {(c["impl"], c.get("qos"), bool(c.get("pipelined"))): c for c in redis_e2e.THROUGHPUT}
    raw_key = "raw-pipelined"

    def redis_case(key: str, spec: dict[str, Any], **meta: Any) -> Case:
        def run() -> dict[str, Any]:
            got = redis_e2e.run_case(url, spec, n)
            rate = got["count"] / max(got["last"] - got["start"], 1e-9)
            return {"rate": rate, "received": got["count"], "sent": n}

        return {"key": key, "note": spec["label"], "run": run, **meta}

    cases: list[Case] = [
        redis_case(raw_key, labels[("raw", None, True)], impl="raw", qos=None,
                   primitive="stream", publish="pipeline of 100 XADD"),
        redis_case("raw-sequential", labels[("raw", None, False)], impl="raw", qos=None,
                   primitive="stream", publish="one awaited XADD at a time"),
        redis_case("catga-qos0", labels[("catga", 0, False)], impl="catga", qos=0,
                   primitive="pub/sub", publish="publish_many", raw=raw_key,
                   peer="faststream-redis-pubsub-batch"),
        redis_case("catga-qos1", labels[("catga", 1, False)], impl="catga", qos=1,
                   primitive="stream", publish="publish_many", raw=raw_key,
                   peer="faststream-redis-stream-batch"),
        redis_case("catga-qos2", labels[("catga", 2, False)], impl="catga", qos=2,
                   primitive="stream", publish="publish_many", raw=raw_key,
                   peer="faststream-redis-stream-batch"),
        _catga_single_case("redis", url, n, "stream", raw="raw-sequential",
                           peer="faststream-redis-stream-single"),
        _faststream_case("redis-pubsub", url, n, "batch", "pub/sub", None),
        _faststream_case("redis-stream", url, n, "batch", "stream", raw_key),
        _faststream_case("redis-stream", url, n, "single", "stream", "raw-sequential"),
    ]  # fmt: skip
    results = _rounds("redis", cases, rounds)
    rows = _throughput_rows("redis", cases, results)
    for spec in redis_e2e.LATENCY:
        progress(f"redis latency: {spec['label']}")
        got = redis_e2e.run_case(url, spec, n_latency)
        values = got["latencies"][n_latency // 10 :]
        p50, p99, p999 = _pct(values)
        impl, qos = spec["impl"], spec.get("qos")
        rows.append(
            _row("redis", "latency", impl, qos if impl == "catga" else None,
                 primitive="pub/sub" if qos == 0 and impl == "catga" else "stream",
                 p50_ms=round(p50, 3), p99_ms=round(p99, 3), p999_ms=round(p999, 3),
                 sent=n_latency, received=got["count"],
                 note="1 msg/ms, separate processes; handler start - send time")
        )  # fmt: skip
    for fs_case, primitive in (("redis-pubsub", "pub/sub"), ("redis-stream", "stream")):
        progress(f"redis latency: faststream {fs_case}")
        rows.append(_faststream_latency("redis", fs_case, url, n_latency, primitive))
    return Section("redis", rows, extra={"rounds": rounds, "messages": n})  # type: ignore[arg-type]


# NATS -------------------------------------------------------------------------------------


def nats_section(quick: bool, url: str) -> Section:
    """Raw nats-py, catga QoS 0/1/2 and FastStream over one nats-server -js, in rounds."""
    from . import nats_e2e

    big, small, rounds, samples, n_latency = (
        (20_000, 5_000, 1, 300, 500) if quick else (100_000, 20_000, 3, 2_000, 3_000)
    )

    def nats_case(key: str, n: int, **meta: Any) -> Case:
        def run() -> dict[str, Any]:
            got = nats_e2e.throughput(key, url, n)
            return {"rate": got["msg_per_s"], "received": got["received"], "sent": n}

        return {"key": key, "run": run, **meta}

    cases: list[Case] = [
        nats_case("raw-core", big, impl="raw", qos=None, primitive="core",
                  publish="nc.publish loop", note="nc.subscribe callback"),
        nats_case("raw-js", small, impl="raw", qos=None, primitive="jetstream",
                  publish="publish_async, 100 in flight", note="pull fetch(100) + ack each"),
        nats_case("catga-qos0", big, impl="catga", qos=0, primitive="core",
                  publish="publish_many", raw="raw-core", peer="faststream-nats-core-batch",
                  note="Worker, core subscription"),
        nats_case("catga-qos1", small, impl="catga", qos=1, primitive="jetstream",
                  publish="publish_many", raw="raw-js", peer="faststream-nats-js-batch",
                  note="Worker, durable pull consumer"),
        nats_case("catga-qos2", small, impl="catga", qos=2, primitive="jetstream",
                  publish="publish_many", raw="raw-js", peer="faststream-nats-js-batch",
                  note="Worker, pull consumer + KV idempotency store"),
        _catga_single_case("nats", url, small, "jetstream", peer="faststream-nats-js-single"),
        _faststream_case("nats-core", url, big, "batch", "core", "raw-core"),
        _faststream_case("nats-js", url, small, "batch", "jetstream", "raw-js"),
        _faststream_case("nats-js", url, small, "single", "jetstream", None),
    ]  # fmt: skip
    results = _rounds("nats", cases, rounds)
    rows = _throughput_rows("nats", cases, results)
    progress(f"nats latency ({samples} samples each, one at a time)")
    for got in asyncio.run(nats_e2e.latency(url, samples)):
        key = got["case"]
        impl = "catga" if key.startswith("catga") else "raw"
        qos = int(key[-1]) if impl == "catga" else None
        core = key == "raw-core" or key == "catga-qos0"
        rows.append(
            _row("nats", "latency", impl, qos, primitive="core" if core else "jetstream",
                 p50_ms=round(got["p50_us"] / 1000, 3), p99_ms=round(got["p99_us"] / 1000, 3),
                 sent=got["samples"], received=got["samples"],
                 note="one message at a time, publish -> handler, one process, 2 connections")
        )  # fmt: skip
    for fs_case, primitive in (("nats-core", "core"), ("nats-js", "jetstream")):
        progress(f"nats latency: faststream {fs_case}")
        rows.append(_faststream_latency("nats", fs_case, url, n_latency, primitive))
    return Section("nats", rows, extra={"rounds": rounds})  # type: ignore[arg-type]


SectionFn = Callable[[bool, str], Section]
