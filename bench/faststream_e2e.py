"""``python -m bench.faststream_e2e [--quick]``: FastStream doing the catga end-to-end work.

The peer for the Redis and NATS sections: the same messages (a small JSON body with a
counter and the send time), the same trivial handler, producer and consumer in
separate processes, servers started on free loopback ports. Cases:

* ``redis-stream``: ``@broker.subscriber(stream=StreamSub(name, group=, consumer=))``
  (``XREADGROUP`` in a consumer group, ``XACK`` after the handler), the same primitive
  as catga's Redis QoS 1/2; producer: ``broker.publish(..., stream=, pipeline=pipe)``
  100 per pipeline (FastStream's documented batch publish), or one awaited publish at
  a time;
* ``redis-pubsub``: ``@broker.subscriber(channel)`` (``SUBSCRIBE``; catga's Redis QoS 0
  primitive, ``PUBLISH``); producer as above, to the channel;
* ``nats-core``: a core NATS subscriber (catga's NATS QoS 0 primitive); producer:
  ``broker.publish(..., subject)`` in a loop (core publish is buffered, no ack);
* ``nats-js``: a JetStream pull subscriber (``PullSub(batch_size=100)``, explicit ack
  after the handler; catga's NATS QoS 1/2 primitive); producer: ``broker.publish(...,
  stream=)`` awaiting the PubAck, 100 in flight (``asyncio.gather``) or one at a time.

FastStream's per-message access log is moved to DEBUG (``log_level=logging.DEBUG``),
so, as in catga (which logs failures only by default), no line is written per message.
Handlers take a pydantic model, FastStream's idiomatic typed body (catga decodes into
an attrs event).

Throughput: rate = messages handled / (last handled - producer start), wall clock
shared by both processes. Latency: the producer sends one message per millisecond;
latency = handler start - the send time carried in the body; p50/p99/p999.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 100
IDLE = 5.0  # a consumer gives up after this long without a message
CASES = ("redis-stream", "redis-pubsub", "nats-core", "nats-js")


class Tally:
    """What a consumer saw: count, first/last handled time, latencies (s)."""

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

    async def wait(self) -> None:
        """Wait for all ``n``, or until nothing arrived for ``IDLE`` seconds."""
        seen = -1
        while not self.done.is_set() and self.count != seen:
            seen = self.count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), IDLE)

    def report(self, latencies: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "first": self.first, "last": self.last}
        if latencies:
            out["latencies"] = self.latencies
        return out


def _names(prefix: str) -> dict[str, str]:
    return {
        "stream": f"{prefix}:bench",
        "channel": f"{prefix}:pubsub",
        "subject": f"{prefix}.core",
        "js_subject": f"{prefix}.js",
        "js_stream": f"{prefix}JS",
    }


def _broker(case: str, url: str) -> Any:
    if case.startswith("redis"):
        from faststream.redis import RedisBroker

        return RedisBroker(url, log_level=logging.DEBUG)
    from faststream.nats import NatsBroker

    return NatsBroker(url, log_level=logging.DEBUG)


# Consumer -------------------------------------------------------------------------------


async def consume(case: str, url: str, prefix: str, n: int, latencies: bool) -> dict[str, Any]:
    from pydantic import BaseModel

    class Tick(BaseModel):
        n: int
        sent: float

    tally = Tally(n)
    names = _names(prefix)
    broker = _broker(case, url)

    async def handle(msg: Tick) -> None:
        tally.saw(msg.sent)

    if case == "redis-stream":
        from faststream.redis import StreamSub

        sub = StreamSub(names["stream"], group="g", consumer="c1", max_records=BATCH)
        broker.subscriber(stream=sub)(handle)
    elif case == "redis-pubsub":
        broker.subscriber(names["channel"])(handle)
    elif case == "nats-core":
        broker.subscriber(names["subject"], pending_msgs_limit=1_000_000)(handle)
    else:
        from faststream.nats import JStream, PullSub

        stream = JStream(names["js_stream"], subjects=[names["js_subject"]])
        broker.subscriber(
            names["js_subject"],
            stream=stream,
            durable="bench",
            pull_sub=PullSub(batch_size=BATCH, timeout=1.0),
        )(handle)
    await broker.start()
    print("READY", flush=True)
    await tally.wait()
    await broker.stop()
    return tally.report(latencies)


# Producer -------------------------------------------------------------------------------


async def produce(case: str, url: str, prefix: str, n: int, mode: str) -> dict[str, Any]:
    """Send ``n`` messages: ``mode`` is batch (100 at once), single (one awaited) or paced."""
    names = _names(prefix)
    broker = _broker(case, url)
    await broker.connect()
    start = time.time()
    if case.startswith("redis"):
        where = {"stream": names["stream"]} if case == "redis-stream" else {}
        channel = None if case == "redis-stream" else names["channel"]
        if mode == "batch":
            redis = await broker.connect()
            for first in range(0, n, BATCH):
                async with redis.pipeline(transaction=False) as pipe:
                    for i in range(first, min(n, first + BATCH)):
                        await broker.publish(
                            {"n": i, "sent": time.time()}, channel, pipeline=pipe, **where
                        )
                    await pipe.execute()
        else:
            for i in range(n):
                await broker.publish({"n": i, "sent": time.time()}, channel, **where)
                if mode == "paced":
                    await asyncio.sleep(0.001)
    elif case == "nats-core":
        subject = names["subject"]
        for i in range(n):
            await broker.publish({"n": i, "sent": time.time()}, subject)
            if mode == "paced":
                await asyncio.sleep(0.001)
    else:
        subject, stream = names["js_subject"], names["js_stream"]
        if mode == "batch":
            for first in range(0, n, BATCH):
                await asyncio.gather(
                    *(
                        broker.publish({"n": i, "sent": time.time()}, subject, stream=stream)
                        for i in range(first, min(n, first + BATCH))
                    )
                )
        else:
            for i in range(n):
                await broker.publish({"n": i, "sent": time.time()}, subject, stream=stream)
                if mode == "paced":
                    await asyncio.sleep(0.001)
    end = time.time()
    await broker.stop()
    return {"start": start, "end": end}


# Orchestration --------------------------------------------------------------------------


def _child(role: str, case: str, url: str, prefix: str, n: int, mode: str) -> list[str]:
    args = [sys.executable, "-m", "bench.faststream_e2e", "--role", role, "--case", case]
    return [*args, "--url", url, "--prefix", prefix, "--n", str(n), "--mode", mode]


def run_case(case: str, url: str, n: int, mode: str) -> dict[str, Any]:
    """One consumer and one producer process; return their reports merged."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    consumer = subprocess.Popen(
        _child("consumer", case, url, prefix, n, mode), stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "READY":
        consumer.kill()
        raise RuntimeError(f"faststream {case}: consumer did not start")
    if case == "nats-js":
        time.sleep(0.2)  # the stream exists once the consumer is READY; let the pull start
    producer = subprocess.run(
        _child("producer", case, url, prefix, n, mode),
        capture_output=True,
        cwd=ROOT,
        text=True,
        check=True,
        timeout=600,
    )
    consumed = json.loads(consumer.communicate(timeout=600)[0].strip().splitlines()[-1])
    produced = json.loads(producer.stdout.strip().splitlines()[-1])
    return {**consumed, **produced}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(case: str, url: str, n: int, mode: str = "batch") -> dict[str, Any]:
    """Messages/s handled end to end for ``case`` (``mode`` batch or single publish)."""
    got = run_case(case, url, n, mode)
    seconds = max(got["last"] - got["start"], 1e-9)
    return {
        "case": case,
        "mode": mode,
        "sent": n,
        "received": got["count"],
        "seconds": round(seconds, 3),
        "msgs_per_s": round(got["count"] / seconds),
        "publish_msgs_per_s": round(n / max(got["end"] - got["start"], 1e-9)),
    }


def latency(case: str, url: str, n: int) -> dict[str, Any]:
    """Latency at one message per millisecond, the first tenth discarded as warm-up."""
    got = run_case(case, url, n, "paced")
    values = got["latencies"][n // 10 :] or [float("nan")]
    return {
        "case": case,
        "sent": n,
        "received": got["count"],
        "p50_ms": round(statistics.median(values) * 1000, 3),
        "p99_ms": round(percentile(values, 0.99) * 1000, 3),
        "p999_ms": round(percentile(values, 0.999) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faststream_e2e", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", choices=["consumer", "producer"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="batch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "consumer":
        report = asyncio.run(
            consume(args.case, args.url, args.prefix, args.n, args.mode == "paced")
        )
        print(json.dumps(report), flush=True)
        return 0
    if args.role == "producer":
        report = asyncio.run(produce(args.case, args.url, args.prefix, args.n, args.mode))
        print(json.dumps(report), flush=True)
        return 0
    # Standalone: start both servers, run every case once, print JSON.
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests.servers import NatsServer, RedisServer

    n, n_lat = (3_000, 500) if args.quick else (20_000, 3_000)
    out: dict[str, Any] = {"throughput": [], "latency": []}
    with tempfile.TemporaryDirectory() as tmp:
        redis, nats = RedisServer(Path(tmp) / "redis"), NatsServer(Path(tmp) / "nats")
        redis.start()
        nats.start()
        try:
            for case in CASES:
                url = redis.url if case.startswith("redis") else nats.url
                for mode in ("batch", "single"):
                    out["throughput"].append(throughput(case, url, n, mode))
                    print(out["throughput"][-1], file=sys.stderr)
                out["latency"].append(latency(case, url, n_lat))
                print(out["latency"][-1], file=sys.stderr)
        finally:
            redis.stop()
            nats.stop()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
