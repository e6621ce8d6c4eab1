"""``python -m bench.nats_e2e [--quick]``: catga over NATS against raw nats-py, same run.

Starts its own ``nats-server -js`` (file storage, temp dir, free loopback port).

Throughput: a consumer process and a producer process per case; the rate is messages
received / (last received - producer start), the median of three runs. Cases:

* raw core: ``nc.publish`` loop -> ``nc.subscribe`` callback (the QoS 0 ceiling);
* raw JetStream: ``js.publish_async`` with 100 in flight -> ``pull fetch(100)`` + ``ack``
  each (the QoS 1/2 ceiling);
* catga QoS 0/1/2: ``Mediator.publish_many`` (batches of 1,000, 100 in flight) ->
  ``Worker`` (concurrency 100) -> the pipeline -> the handler; QoS 2 with the KV store.

Latency: one message at a time, publish -> handler, in one process over two
connections; p50/p99 per QoS and for raw core/JetStream.

Wire format: the envelope as one msgpack blob (what catga_nats sends) against its
metadata in NATS headers and the body as data, core pub/sub in one process.

Writes ``bench/results/nats-<UTC timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from attrs import frozen

from catga import CatgaOptions, Event, HandlerRegistry, IdempotencyOptions, Mediator, QoS, Worker
from catga import handles as handles_

from ._harness import environment, progress

RESULTS = Path(__file__).resolve().parent / "results"
IDLE = 10.0  # a consumer gives up after this long without a message
BATCH = 1000  # events per Mediator.publish_many; at most 100 unacknowledged at once
REPEATS = 3  # throughput runs per case; the median is reported (this machine is noisy)


@frozen(kw_only=True)
class Tick0(Event):
    n: int
    qos: ClassVar[QoS] = QoS.AT_MOST_ONCE


@frozen(kw_only=True)
class Tick1(Event):
    n: int
    qos: ClassVar[QoS] = QoS.AT_LEAST_ONCE


@frozen(kw_only=True)
class Tick2(Event):
    n: int
    qos: ClassVar[QoS] = QoS.EXACTLY_ONCE


TYPES: dict[int, type[Event]] = {0: Tick0, 1: Tick1, 2: Tick2}
ROUTES = {Tick0: "bench0", Tick1: "bench1", Tick2: "bench2"}


def nats_config(url: str, prefix: str) -> Any:
    from catga_nats import NatsConfig

    return NatsConfig(servers=url, prefix=prefix, fetch_batch=100, max_in_flight=100)


# Server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="catga-bench-nats-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        args = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        args += ["-sd", str(self.dir / "js")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# Roles (each runs in its own process) -------------------------------------------


class Counter:
    def __init__(self, n: int) -> None:
        self.n, self.count, self.first, self.last = n, 0, 0.0, 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.n:
            self.done.set()

    async def wait(self) -> dict[str, Any]:
        seen = -1
        while not self.done.is_set() and seen != self.count:
            seen = self.count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), IDLE)
        return {"count": self.count, "first": self.first, "last": self.last}


async def consume(case: str, url: str, prefix: str, n: int) -> dict[str, Any]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

    counter = Counter(n)
    if case == "raw-core":
        nc = await nats.connect(url)

        async def on_msg(msg: Any) -> None:
            counter.hit()

        await nc.subscribe(f"{prefix}.raw", cb=on_msg, pending_msgs_limit=1_000_000)
        await nc.flush()
        print("READY", flush=True)
        result = await counter.wait()
        await nc.close()
        return result
    if case == "raw-js":
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=f"{prefix}RAW", subjects=[f"{prefix}.rawjs"]))
        sub = await js.pull_subscribe(
            f"{prefix}.rawjs",
            durable="raw",
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
        )
        print("READY", flush=True)

        async def pull() -> None:
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await msg.ack()
                    counter.hit()

        task = asyncio.create_task(pull())
        result = await counter.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
        return result
    return await consume_catga(int(case[-1]), url, prefix, counter)


async def consume_catga(qos: int, url: str, prefix: str, counter: Counter) -> dict[str, Any]:
    from catga_nats import NatsIdempotencyStore, NatsTransport

    @handles_(TYPES[qos])
    async def on_tick(event: Event) -> None:
        counter.hit()

    config = nats_config(url, prefix)
    async with NatsTransport(config) as transport:
        store = NatsIdempotencyStore(config, client=transport.client)
        options = CatgaOptions(routes=ROUTES, idempotency=IdempotencyOptions(lease=30.0))
        mediator = Mediator(
            HandlerRegistry(on_tick), options=options, transport=transport, store=store
        )
        async with Worker(mediator, concurrency=100, routes=[ROUTES[TYPES[qos]]]) as worker:
            print("READY", flush=True)
            result = await counter.wait()
            result["worker"] = repr(worker.health())
        await mediator.aclose()
    return result


async def produce(case: str, url: str, prefix: str, n: int) -> dict[str, Any]:
    import nats

    start = time.time()
    if case == "raw-core":
        nc = await nats.connect(url)
        for i in range(n):
            await nc.publish(f"{prefix}.raw", b'{"n": %d}' % i)
        await nc.flush()
        await nc.close()
    elif case == "raw-js":
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=100)
        futures = []
        for i in range(n):
            data = b'{"n": %d}' % i
            futures.append(
                await js.publish_async(f"{prefix}.rawjs", data, headers={"Nats-Msg-Id": str(i)})
            )
        await asyncio.gather(*futures)
        await nc.close()
    else:
        await produce_catga(int(case[-1]), url, prefix, n)
    return {"start": start, "end": time.time()}


async def produce_catga(qos: int, url: str, prefix: str, n: int) -> None:
    from catga_nats import NatsTransport

    registry = HandlerRegistry()
    registry.add_types(Tick0, Tick1, Tick2)
    async with NatsTransport(nats_config(url, prefix)) as transport:
        mediator = Mediator(registry, options=CatgaOptions(routes=ROUTES), transport=transport)
        kind = TYPES[qos]
        for base in range(0, n, BATCH):
            await mediator.publish_many([kind(n=i) for i in range(base, min(n, base + BATCH))])  # type: ignore[call-arg]
        await transport.client.flush()


def spawn(role: str, case: str, url: str, prefix: str, n: int) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "bench.nats_e2e", "--role", role, "--case", case]
    args += ["--url", url, "--prefix", prefix, "--n", str(n)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]
    )


def throughput(case: str, url: str, n: int) -> dict[str, Any]:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    consumer = spawn("consumer", case, url, prefix, n)
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "READY":
        raise RuntimeError(f"{case}: consumer did not start")
    producer = spawn("producer", case, url, prefix, n)
    out, _ = producer.communicate(timeout=600)
    sent = json.loads(out.strip().splitlines()[-1])
    got = json.loads(consumer.communicate(timeout=600)[0].strip().splitlines()[-1])
    seconds = max(got["last"] - sent["start"], 1e-9)
    return {
        "case": case,
        "sent": n,
        "received": got["count"],
        "seconds": round(seconds, 3),
        "msg_per_s": round(got["count"] / seconds),
        "publish_msg_per_s": round(n / max(sent["end"] - sent["start"], 1e-9)),
    }


# Latency (one process, two connections) --------------------------------------------


async def latency(url: str, samples: int) -> list[dict[str, Any]]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

    rows = []
    prefix = f"l{uuid.uuid4().hex[:8]}"
    pub, sub_nc = await nats.connect(url), await nats.connect(url)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        arrived.put_nowait(time.perf_counter())

    await sub_nc.subscribe(f"{prefix}.core", cb=on_msg)
    await sub_nc.flush()
    rows.append(
        await _sample("raw-core", samples, arrived, lambda: pub.publish(f"{prefix}.core", b"x"))
    )

    js = pub.jetstream()
    await js.add_stream(StreamConfig(name=f"{prefix}L", subjects=[f"{prefix}.js"]))
    pull = await sub_nc.jetstream().pull_subscribe(
        f"{prefix}.js", durable="lat", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )

    async def puller() -> None:
        while True:
            try:
                msgs = await pull.fetch(1, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                arrived.put_nowait(time.perf_counter())

    task = asyncio.create_task(puller())
    rows.append(await _sample("raw-js", samples, arrived, lambda: js.publish(f"{prefix}.js", b"x")))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.close()
    await sub_nc.close()
    for qos in (0, 1, 2):
        rows.append(await _catga_latency(qos, url, samples))  # noqa: PERF401 - one at a time
    return rows


async def _catga_latency(qos: int, url: str, samples: int) -> dict[str, Any]:
    from catga_nats import NatsIdempotencyStore, NatsTransport

    arrived: asyncio.Queue[float] = asyncio.Queue()

    @handles_(TYPES[qos])
    async def on_tick(event: Event) -> None:
        arrived.put_nowait(time.perf_counter())

    config = nats_config(url, f"c{uuid.uuid4().hex[:8]}")
    registry = HandlerRegistry()
    registry.add_types(Tick0, Tick1, Tick2)
    async with NatsTransport(config) as receiver, NatsTransport(config) as sender_t:
        store = NatsIdempotencyStore(config, client=receiver.client)
        mediator = Mediator(
            HandlerRegistry(on_tick),
            options=CatgaOptions(routes=ROUTES),
            transport=receiver,
            store=store,
        )
        sender = Mediator(registry, options=CatgaOptions(routes=ROUTES), transport=sender_t)
        async with Worker(mediator, concurrency=16, routes=[ROUTES[TYPES[qos]]]):
            await receiver.client.flush()
            kind = TYPES[qos]
            row = await _sample(
                f"catga-qos{qos}",
                samples,
                arrived,
                lambda: sender.publish(kind(n=0)),  # type: ignore[call-arg]
            )
        await mediator.aclose()
        await sender.aclose()
    return row


async def _sample(
    case: str, samples: int, arrived: asyncio.Queue[float], send: Any
) -> dict[str, Any]:
    took = []
    lost = 0
    for i in range(samples + samples // 10):
        while not arrived.empty():  # a late arrival of a sample given up on
            arrived.get_nowait()
        start = time.perf_counter()
        await send()
        try:
            end = await asyncio.wait_for(arrived.get(), 2)
        except TimeoutError:  # QoS 0 may lose one; counted, not timed
            lost += 1
            continue
        if i >= samples // 10:  # the first tenth warms up
            took.append((end - start) * 1e6)
    took.sort()
    return {
        "case": case,
        "samples": len(took),
        "lost": lost,
        "p50_us": round(statistics.median(took), 1),
        "p99_us": round(took[int(len(took) * 0.99) - 1], 1),
    }


# Wire format: one msgpack blob vs metadata in headers ------------------------------


async def wire(url: str, n: int) -> list[dict[str, Any]]:
    """Core publish -> callback that rebuilds the Envelope, one process: blob vs headers."""
    import nats

    from catga.typing import Envelope
    from catga_nats import _wire

    body = b'{"n":123,"message_id":"3f22c16a0c181fbc000000002710","created_at":1795511749.99}'
    env = Envelope(
        message_id="3f22c16a0c181fbc000000002710", message_type="bench.Tick1", body=body,
        qos=1, correlation_id="c-1", created_at=1795511749.99,
    )  # fmt: skip

    def from_headers(msg: Any) -> Envelope:
        h = msg.headers
        return Envelope(
            message_id=h["Nats-Msg-Id"], message_type=h["Catga-Type"], body=msg.data,
            qos=int(h["Catga-Qos"]), correlation_id=h.get("Catga-Correlation-Id"),
            created_at=float(h["Catga-Created-At"]),
        )  # fmt: skip

    headers = {
        "Nats-Msg-Id": env.message_id, "Catga-Type": env.message_type, "Catga-Qos": "1",
        "Catga-Correlation-Id": "c-1", "Catga-Created-At": repr(env.created_at),
    }  # fmt: skip
    rows = []
    for mode in ("blob", "headers") * 3:
        pub, sub = await nats.connect(url), await nats.connect(url)
        done, seen = asyncio.Event(), [0]

        async def on_msg(
            msg: Any, mode: str = mode, seen: list[int] = seen, done: asyncio.Event = done
        ) -> None:
            _wire.decode(msg.data) if mode == "blob" else from_headers(msg)
            seen[0] += 1
            if seen[0] == n:
                done.set()

        subject = f"wire.{uuid.uuid4().hex}"
        await sub.subscribe(subject, cb=on_msg, pending_msgs_limit=10 * n)
        await sub.flush()
        start = time.perf_counter()
        for _ in range(n):
            if mode == "blob":
                await pub.publish(subject, _wire.encode(env))
            else:
                await pub.publish(subject, body, headers=headers)
        await asyncio.wait_for(done.wait(), 60)
        rows.append({"mode": mode, "msg_per_s": round(n / (time.perf_counter() - start))})
        await pub.close()
        await sub.close()
    return [
        {"mode": m, "msg_per_s": statistics.median(r["msg_per_s"] for r in rows if r["mode"] == m)}
        for m in ("blob", "headers")
    ]


# Report ---------------------------------------------------------------------------


def render(
    env: dict[str, Any],
    tp: list[dict[str, Any]],
    lat: list[dict[str, Any]],
    formats: list[dict[str, Any]],
) -> str:
    by = {r["case"]: r for r in tp}
    core, js = by["raw-core"]["msg_per_s"], by["raw-js"]["msg_per_s"]
    ceiling = {
        "raw-core": core,
        "raw-js": js,
        "catga-qos0": core,
        "catga-qos1": js,
        "catga-qos2": js,
    }
    lines = [
        "## NATS end to end (separate producer and consumer processes)",
        "",
        "| case | sent | received | msg/s (median) | % of its raw ceiling | runs msg/s | "
        "publish msg/s |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in tp:
        share = 100 * r["msg_per_s"] / max(ceiling[r["case"]], 1)
        lines.append(
            f"| {r['case']} | {r['sent']} | {r['received']} | {r['msg_per_s']:,} | "
            f"{share:.0f}% | {', '.join(f'{x:,}' for x in r['runs_msg_per_s'])} | "
            f"{r['publish_msg_per_s']:,} |"
        )
    lines += ["", "| latency case | samples | lost | p50 µs | p99 µs |"]
    lines += ["| --- | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['case']} | {r['samples']} | {r['lost']} | {r['p50_us']} | {r['p99_us']} |"
        for r in lat
    ]
    lines += ["", "| wire format (core pub/sub, envelope rebuilt) | msg/s (median of 3) |"]
    lines += ["| --- | ---: |"]
    lines += [f"| {r['mode']} | {r['msg_per_s']:,.0f} |" for r in formats]
    lines += [
        "",
        f"Command: `{env['command']}`; Python {env['python']}, {env['machine']['cpus']} CPUs, "
        f"{env['machine']['platform']}, {env['date']}; load at start "
        f"{env['machine']['loadavg_at_start']}.",
        "Ceilings: QoS 0 vs raw core; QoS 1 and 2 vs raw JetStream (100 in flight, "
        "fetch(100) + ack). Targets: QoS 0 >= 50%, QoS 1 >= 60%, QoS 2 >= 35%, QoS 1 p50 <= 1 ms.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nats_e2e")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", choices=["consumer", "producer"])
    parser.add_argument("--case")
    parser.add_argument("--url")
    parser.add_argument("--prefix")
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.role == "consumer":
        print(json.dumps(asyncio.run(consume(args.case, args.url, args.prefix, args.n))))
        return
    if args.role == "producer":
        print(json.dumps(asyncio.run(produce(args.case, args.url, args.prefix, args.n))))
        return
    command = "python -m bench.nats_e2e" + (" --quick" if args.quick else "")
    env = environment(command)
    server = Server()
    try:
        big, small, samples = (20_000, 5_000, 300) if args.quick else (100_000, 20_000, 2_000)
        counts = {"raw-core": big, "raw-js": small, "catga-qos0": big}
        counts |= {"catga-qos1": small, "catga-qos2": small}
        tp = []
        for case, n in counts.items():
            runs = []
            for run in range(REPEATS):
                progress(f"throughput {case} ({n} messages), run {run + 1}/{REPEATS}")
                runs.append(throughput(case, server.url, n))
            runs.sort(key=lambda r: r["msg_per_s"])
            median = dict(runs[len(runs) // 2])
            median["runs_msg_per_s"] = [r["msg_per_s"] for r in runs]
            tp.append(median)
        progress(f"latency ({samples} samples each)")
        lat = asyncio.run(latency(server.url, samples))
        progress("wire format: blob vs headers")
        formats = asyncio.run(wire(server.url, big // 5))
    finally:
        server.stop()
    text = render(env, tp, lat, formats)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    payload = {"environment": env, "throughput": tp, "latency": lat, "wire": formats}
    (RESULTS / f"nats-{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"nats-{stamp}.md").write_text(text)


if __name__ == "__main__":
    main()
