"""A consumer process of the fault scenarios, on catga's public API only.

``python -m tests.faults.consumer BACKEND URL PREFIX LEDGER NAME [--plan A:POINT:N[:QOS] ...]``

Runs a :class:`catga.Worker` on the routes of ``tests.faults.app`` until SIGTERM
(graceful stop) or SIGKILL. Every handler writes ``start`` and ``effect`` rows to the
ledger; QoS 2 results are committed through a store wrapper that writes ``commit_*``
rows. A plan entry ``kill:after_effect:3`` makes the process SIGKILL itself the 3rd
time it reaches that point (``stop:...`` SIGSTOPs itself instead, for the harness to
SIGCONT); ``:2`` at the end counts only QoS 2 messages. Points, in order:

* ``before_effect``: the handler started, its effect is not written;
* ``after_effect``: the effect is written, the handler has not returned;
* ``after_commit``: the QoS 2 result was committed in the store, not yet acked;
* ``before_ack``: the whole pipeline returned; the worker acks next.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from collections import Counter
from typing import Any

import msgspec

from catga import HandlerRegistry, Mediator, Order, Worker, handles
from catga.typing import ClaimResult, IdempotencyStore, Next

from . import app
from .ledger import Writer

POINTS = ("before_effect", "after_effect", "after_commit", "before_ack")


class Plan:
    """Where this process dies or stops, counted per point (and QoS)."""

    def __init__(self, entries: list[str], ledger: Writer) -> None:
        self.ledger = ledger
        self.rules: list[tuple[str, str, int, int | None]] = []
        for entry in entries:
            parts = entry.split(":")
            action, point, n = parts[0], parts[1], int(parts[2])
            qos = int(parts[3]) if len(parts) > 3 else None
            if action not in ("kill", "stop") or point not in POINTS:
                raise SystemExit(f"bad plan entry {entry!r}")
            self.rules.append((action, point, n, qos))
        self.counts: Counter[tuple[str, int | None]] = Counter()

    def hit(self, point: str, message_id: str, qos: int) -> None:
        if not self.rules:
            return
        self.counts[point, None] += 1
        self.counts[point, qos] += 1
        for action, rule_point, n, rule_qos in self.rules:
            if rule_point == point and self.counts[point, rule_qos] == n:
                if rule_qos is not None and rule_qos != qos:
                    continue
                if action == "kill":
                    self.ledger.event(message_id, qos, "dying", "", point)
                    os.kill(os.getpid(), signal.SIGKILL)
                else:
                    self.ledger.event(message_id, qos, "stopped", "", point)
                    os.kill(os.getpid(), signal.SIGSTOP)
                    self.ledger.event(message_id, qos, "continued", "", point)


class LedgerStore:
    """Delegates to the real store; records which attempt's commit the store accepted.

    The handler returns its attempt id, so the encoded result names the attempt.
    """

    def __init__(self, inner: IdempotencyStore, ledger: Writer, plan: Plan) -> None:
        self.inner, self.ledger, self.plan = inner, ledger, plan

    async def claim(self, key: str, lease: float) -> ClaimResult:
        return await self.inner.claim(key, lease)

    async def extend(self, key: str, token: str, lease: float) -> bool:
        return await self.inner.extend(key, token, lease)

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        message_id = key.rsplit(":", 1)[1]
        attempt = str(msgspec.json.decode(result))
        self.ledger.event(message_id, 2, "commit_try", attempt, key)
        try:
            ok = await self.inner.complete(key, token, result, ttl)
        except Exception as exc:
            self.ledger.event(message_id, 2, "commit_error", attempt, repr(exc)[:200])
            raise
        self.ledger.event(message_id, 2, "commit_ok" if ok else "commit_refused", attempt, key)
        if ok:
            self.plan.hit("after_commit", message_id, 2)
        return ok

    async def release(self, key: str, token: str) -> None:
        await self.inner.release(key, token)

    async def aclose(self) -> None:
        await self.inner.aclose()


class BeforeAck:
    """The outermost behaviour: once it returns the worker acks the delivery."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        result = await next(message, ctx)
        self.plan.hit("before_ack", message.message_id, int(type(message).qos))
        return result


def registry(ledger: Writer, plan: Plan) -> HandlerRegistry:
    async def run(event: Any) -> str:
        qos = int(type(event).qos)
        attempt = uuid.uuid4().hex[:12]
        ledger.event(event.message_id, qos, "start", attempt)
        plan.hit("before_effect", event.message_id, qos)
        ledger.event(event.message_id, qos, "effect", attempt)
        plan.hit("after_effect", event.message_id, qos)
        return attempt

    @handles(app.ItemQ0)
    async def item_q0(event: app.ItemQ0) -> str:
        return await run(event)

    @handles(app.ItemQ1)
    async def item_q1(event: app.ItemQ1) -> str:
        return await run(event)

    @handles(app.ItemQ2)
    async def item_q2(event: app.ItemQ2) -> str:
        return await run(event)

    return HandlerRegistry(item_q0, item_q1, item_q2)


def dump_tasks() -> None:
    """SIGUSR2: print where every asyncio task waits (the harness asks when a run is stuck)."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", flush=True)
        awaitable: Any = task.get_coro()
        for _ in range(40):  # follow the chain of awaits down to the innermost wait
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
            if frame is not None:
                print(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaitable = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
            if awaitable is None:
                break
            if not (hasattr(awaitable, "cr_frame") or hasattr(awaitable, "gi_frame")):
                print(f"  waits on {awaitable!r}"[:300])
                break
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    ledger = Writer(args.ledger, args.name, os.getpid())
    plan = Plan(args.plan, ledger)
    transport, store = await app.open_backend(args.backend, args.url, args.prefix)
    mediator = Mediator(
        registry(ledger, plan),
        options=app.options(),
        transport=transport,
        store=LedgerStore(store, ledger, plan),
    )
    mediator.add_behavior(BeforeAck(plan), order=Order.LOGGING - 50)
    worker = Worker(
        mediator,
        concurrency=args.concurrency,
        keepalive=app.KEEPALIVE,
        busy_delay=app.BUSY_DELAY,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    await worker.start()
    ledger.proc("ready")

    async def heartbeat() -> None:
        while True:
            h = worker.health()
            ledger.proc("health", h.healthy, h.handled, h.dead_lettered)
            await asyncio.sleep(0.5)

    beat = asyncio.create_task(heartbeat())
    await stop.wait()
    beat.cancel()
    await worker.stop()
    ledger.proc("stopped")
    await mediator.aclose()
    await transport.aclose()
    await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["redis", "nats"])
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("ledger")
    parser.add_argument("name")
    parser.add_argument("--plan", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
