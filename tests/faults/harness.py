"""Runs a fault scenario: real brokers, producer and consumer processes, faults, checks.

:func:`run` starts a broker (and a fault proxy in front of it when the scenario cuts
or stalls connections), consumer processes (``tests.faults.consumer``) and one
producer process (``tests.faults.producer``), fires the scenario's faults as the
acked count passes given fractions, restarts what died, waits (polling, with a
deadline) until every acked message was handled and the broker holds nothing
unsettled, stops the consumers, then checks the ledger: see :class:`LevelResult`.

Everything runs on loopback, on free ports, in a temp directory of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from catga.typing import Done, Envelope

from ..servers import NatsServer, RedisServer
from . import app
from .ledger import Reader
from .proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.05
STOP_MAX = 60.0  # seconds a SIGSTOPped consumer waits for another to take over
STUCK = 20.0  # seconds without any consumer event, once all is sent, before giving up


@dataclass(frozen=True)
class Scenario:
    """What goes wrong during a run; fractions are of the messages acked so far.

    Args:
        name: short id (table rows, test ids).
        summary: one line for the docs.
        plans: consumer plans (see ``tests.faults.consumer``), taken in order by each
            consumer start and restart; ``{n}`` entries are scaled with the run size.
        kills: SIGKILL a consumer (round robin) from outside at these fractions.
        restarts: kill -9 the broker and start it again with the same data.
        cuts: abort every client connection through the proxy.
        stalls: stop forwarding for ``stall_seconds`` through the proxy.
        garbage: inject bad input on every durable route.
        consumers: consumer processes at once.
        nats: NatsConfig overrides for every process of the run (a workaround to state).
        redis: RedisConfig overrides, likewise.
    """

    name: str
    summary: str
    plans: tuple[str, ...] = ()
    kills: tuple[float, ...] = ()
    restarts: tuple[float, ...] = ()
    cuts: tuple[float, ...] = ()
    stalls: tuple[float, ...] = ()
    stall_seconds: float = 3.0
    garbage: tuple[float, ...] = ()
    consumers: int = 2
    levels: tuple[int, ...] = (0, 1, 2)
    nats: tuple[tuple[str, Any], ...] = ()
    redis: tuple[tuple[str, Any], ...] = ()

    @property
    def proxied(self) -> bool:
        return bool(self.cuts or self.stalls)


@dataclass
class LevelResult:
    """The checks of one QoS level in one run.

    ``lost``: acked ids with no handled effect (QoS 0/1) or no committed result (QoS 2).
    ``duplicates``: QoS 2 ids whose result the store accepted from more than one
    attempt. ``repeats``: ids whose handler wrote its effect more than once (allowed
    at QoS 1; at QoS 2 it is the window of effects not committed through the store).
    ``invented``: handled ids that were never sent.
    """

    qos: int
    sent: int
    acked: int
    indeterminate: int
    handled: int
    lost: int
    duplicates: int
    repeats: int
    invented: int
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.invented:
            return False
        if self.qos == 0:
            return True
        return self.lost == 0 and (self.qos == 1 or self.duplicates == 0)


@dataclass
class RunResult:
    """One scenario on one backend."""

    scenario: str
    backend: str
    count: int
    levels: list[LevelResult]
    bad_injected: int = 0
    bad_in_dlq: int = 0
    bad_missing: list[str] = field(default_factory=list)
    good_in_dlq: int = 0
    consumers_alive: int = 0
    consumers_expected: int = 0
    self_kills: int = 0
    external_kills: int = 0
    broker_restarts: int = 0
    cuts: int = 0
    stalls: int = 0
    sigstops: int = 0
    stale_refused: int = 0
    stale_committed: int = 0
    producer_rc: int | None = None
    drained: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(level.ok for level in self.levels)
            and self.bad_in_dlq == self.bad_injected
            and self.good_in_dlq == 0
            and self.consumers_alive == self.consumers_expected
            and self.stale_committed == 0
            and self.producer_rc == 0
            and self.drained
            and not any("did not stop" in note for note in self.notes)
        )

    def failures(self) -> list[str]:
        """What failed, in words (empty when ``ok``)."""
        out = []
        for level in self.levels:
            if level.invented:
                out.append(f"QoS {level.qos}: {level.invented} handled ids never sent")
            if level.qos >= 1 and level.lost:
                out.append(f"QoS {level.qos}: {level.lost} acked ids lost {level.lost_ids[:5]}")
            if level.qos == 2 and level.duplicates:
                out.append(
                    f"QoS 2: {level.duplicates} ids committed twice {level.duplicate_ids[:5]}"
                )
        if self.bad_in_dlq != self.bad_injected:
            out.append(
                f"bad input: {self.bad_in_dlq}/{self.bad_injected} in the DLQ with a reason; "
                f"missing {self.bad_missing[:5]}"
            )
        if self.good_in_dlq:
            out.append(f"{self.good_in_dlq} good messages dead-lettered")
        if self.consumers_alive != self.consumers_expected:
            out.append(f"consumers alive {self.consumers_alive}/{self.consumers_expected}")
        if self.stale_committed:
            out.append(f"{self.stale_committed} stale (SIGSTOPped) commits accepted")
        if self.producer_rc != 0:
            out.append(f"producer exited with {self.producer_rc}")
        if not self.drained:
            out.append("did not drain before the deadline")
        return out + self.notes


# Processes ---------------------------------------------------------------------------


class Consumer:
    """One consumer slot: the process in it now, restarted when it dies."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.name = f"c{slot}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped_at: float | None = None  # SIGSTOPped itself; SIGCONT pending

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Run:
    """The state of one scenario run (see :func:`run`)."""

    def __init__(
        self, scenario: Scenario, backend: str, workdir: Path, count: int, rate: float
    ) -> None:
        self.scenario, self.backend, self.count, self.rate = scenario, backend, count, rate
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ledger_path = workdir / "ledger.sqlite"
        self.prefix = f"f{uuid.uuid4().hex[:10]}"
        self.server: RedisServer | NatsServer = (
            RedisServer(workdir / "redis") if backend == "redis" else NatsServer(workdir / "nats")
        )
        self.proxy: FaultProxy | None = None
        self.consumers = [Consumer(i) for i in range(scenario.consumers)]
        self.plans = [self._scale(p) for p in scenario.plans]
        self.producer: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.reader: Reader | None = None
        self.result = RunResult(scenario.name, backend, count, [])
        self.stops: set[tuple[int, str]] = set()  # (pid, message id) SIGCONTed
        self.tags: list[str] = []

    def _scale(self, plan: str) -> list[str]:
        """``kill:after_effect:{40}+...`` -> its rules, counts scaled to the run size (>= 3).

        ``-`` is a start with no rule.
        """
        rules = []
        for rule in plan.split("+"):
            if rule == "-":
                continue
            parts = rule.split(":")
            if parts[2].startswith("{"):
                base = int(parts[2].strip("{}"))
                parts[2] = str(max(3, round(base * self.count / 1000)))
            rules.append(":".join(parts))
        return rules

    @property
    def url(self) -> str:
        """Where clients connect: the proxy when there is one, else the broker."""
        port = self.proxy.port if self.proxy is not None else self.server.port
        scheme = "redis" if self.backend == "redis" else "nats"
        suffix = "/0" if self.backend == "redis" else ""
        return f"{scheme}://127.0.0.1:{port}{suffix}"

    @property
    def direct_url(self) -> str:
        return self.server.url

    def spawn(self, module: str, *args: str, log: str) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    app.NATS_ENV: json.dumps(dict(self.scenario.nats)),
                    app.REDIS_ENV: json.dumps(dict(self.scenario.redis)),
                },
            )
        self.procs.append(proc)
        return proc

    def start_consumer(self, consumer: Consumer) -> None:
        plan: list[str] = []
        if self.plans:
            for rule in self.plans.pop(0):
                plan += ["--plan", rule]
        args = [self.backend, self.url, self.prefix, str(self.ledger_path), consumer.name]
        consumer.proc = self.spawn(
            "tests.faults.consumer", *args, *plan, log=f"{consumer.name}.log"
        )
        consumer.stopped_at = None

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is truthy; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(POLL)


# Broker-side probes (direct connections, never through the proxy) ------------------


async def _redis_backlog(url: str, prefix: str, routes: list[str]) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_timeout=5.0)
    try:
        unsettled = 0
        for route in routes:
            key = f"{prefix}:{route}"
            if not await client.exists(key):
                continue
            last = (await client.xinfo_stream(key))["last-generated-id"]
            for group in await client.xinfo_groups(key):
                unsettled += int(group["pending"])
                if group["last-delivered-id"] != last:
                    unsettled += 1
        return unsettled
    finally:
        await client.aclose()


async def _nats_backlog(url: str, prefix: str) -> int:
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        stream = app.nats_config(url, prefix).stream_name
        unsettled = 0
        for info in await js.consumers_info(stream):
            unsettled += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return unsettled
    finally:
        await nc.close()


async def _inject(backend: str, url: str, prefix: str, routes: list[str], tag: str) -> list[str]:
    """Write bad input on each route behind catga's back; return the tags written."""
    envelope = msgspec.msgpack.encode
    tags = []
    if backend == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(url, socket_timeout=5.0)
        try:
            for route in routes:
                key = f"{prefix}:{route}"
                bad = {
                    "nofield": {"x": f"{tag}-{route}-nofield"},
                    "junk": {"m": b"\xc1" + f"{tag}-{route}-junk".encode()},
                    "unknown": {"m": envelope(_unknown(f"{tag}-{route}-unknown"))},
                    "badbody": {"m": envelope(_bad_body(f"{tag}-{route}-badbody", route))},
                }
                for what, fields in bad.items():
                    await client.xadd(key, fields)  # type: ignore[arg-type]
                    tags.append(f"{tag}-{route}-{what}")
        finally:
            await client.aclose()
        return tags
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        cfg = app.nats_config(url, prefix)
        for route in routes:
            subject = cfg.durable_subject(route)
            bad = {
                "junk": b"\xc1" + f"{tag}-{route}-junk".encode(),
                "unknown": envelope(_unknown(f"{tag}-{route}-unknown")),
                "badbody": envelope(_bad_body(f"{tag}-{route}-badbody", route)),
            }
            for what, data in bad.items():
                await js.publish(subject, data)
                tags.append(f"{tag}-{route}-{what}")
    finally:
        await nc.close()
    return tags


def _unknown(tag: str) -> Envelope:
    return Envelope(message_id=tag, message_type="faults.NoSuchType", body=b"{}", qos=1)


def _bad_body(tag: str, route: str) -> Envelope:
    qos = 2 if route == app.ROUTE_OF[2] else 1
    name = "faults.ItemQ2" if qos == 2 else "faults.ItemQ1"
    return Envelope(message_id=tag, message_type=name, body=b"{not json", qos=qos)


async def _dead_letters(
    backend: str, url: str, prefix: str, routes: list[str], nats: dict[str, Any]
) -> list[Any]:
    transport, _ = await app.open_backend(backend, url, prefix, with_store=False, **nats)
    try:
        found = []
        for route in routes:
            found.extend(await transport.dead_letters(route, limit=100_000))
        return found
    finally:
        await transport.aclose()


async def _stored_results(
    backend: str, url: str, prefix: str, keys: list[str], nats: dict[str, Any]
) -> dict[str, str]:
    """key -> the attempt whose result the store holds (claiming keys it does not hold)."""
    transport, store = await app.open_backend(backend, url, prefix, **nats)
    try:
        out = {}
        for key in keys:
            claim = await store.claim(key, 60.0)
            if isinstance(claim, Done):
                out[key] = str(msgspec.json.decode(claim.result))
        return out
    finally:
        await store.aclose()
        await transport.aclose()


# The run -----------------------------------------------------------------------------


def run(
    scenario: Scenario,
    backend: str,
    workdir: Path,
    *,
    count: int = 1000,
    rate: float = 600.0,
    deadline: float = 150.0,
) -> RunResult:
    """Run ``scenario`` on ``backend`` with ``count`` messages per QoS level; check it."""
    r = Run(scenario, backend, workdir, count, rate)
    started = time.monotonic()
    try:
        _run(r, deadline)
    finally:
        r.kill_all()
        if r.proxy is not None:
            r.proxy.close()
        r.server.kill()
        if r.reader is not None:
            r.reader.close()
    r.result.seconds = round(time.monotonic() - started, 1)
    return r.result


def _run(r: Run, deadline: float) -> None:
    sc, res = r.scenario, r.result
    r.server.start()
    if sc.proxied:
        r.proxy = FaultProxy(r.server.port)
        r.proxy.start()
    r.reader = reader = Reader(r.ledger_path)
    for consumer in r.consumers:
        r.start_consumer(consumer)
    for consumer in r.consumers:
        wait_until(lambda c=consumer: _ready(r, c), 60.0, f"consumer {consumer.name} subscribed")
    routes = [app.ROUTE_OF[q] for q in sc.levels if q >= 1]
    r.producer = r.spawn(
        "tests.faults.producer",
        r.backend,
        r.url,
        r.prefix,
        str(r.ledger_path),
        "--count",
        str(r.count),
        "--rate",
        str(r.rate),
        "--qos",
        ",".join(map(str, sc.levels)),
        "--run",
        r.prefix,
        log="producer.log",
    )
    total = r.count * len(sc.levels)
    schedule = sorted(
        [(f, "kill") for f in sc.kills]
        + [(f, "restart") for f in sc.restarts]
        + [(f, "cut") for f in sc.cuts]
        + [(f, "stall") for f in sc.stalls]
        + [(f, "garbage") for f in sc.garbage]
    )
    next_victim = 0
    end = time.monotonic() + deadline
    last_probe = 0.0
    seen, seen_at = -1, time.monotonic()
    while time.monotonic() < end:
        for consumer in r.consumers:  # restart the dead first: a fault always finds a victim
            if consumer.proc is not None and consumer.proc.poll() is not None:
                r.start_consumer(consumer)
        progress = reader.acked_count() / total
        while schedule and schedule[0][0] <= progress:
            _, fault = schedule.pop(0)
            if fault == "kill":
                next_victim = _external_kill(r, next_victim)
            elif fault == "restart":
                r.server.restart()
                res.broker_restarts += 1
            elif fault == "cut":
                assert r.proxy is not None
                r.proxy.cut()
                res.cuts += 1
            elif fault == "stall":
                assert r.proxy is not None
                r.proxy.stall(sc.stall_seconds)
                res.stalls += 1
            else:
                tags = asyncio.run(
                    _inject(r.backend, r.direct_url, r.prefix, routes, f"bad{len(r.tags)}")
                )
                r.tags.extend(tags)
        _handle_stops(r, reader)
        producer_done = r.producer.poll() is not None
        if producer_done and not schedule and time.monotonic() - last_probe > 0.5:
            last_probe = time.monotonic()
            if _drained(r, reader, routes):
                res.drained = True
                break
            events = reader.scalar("SELECT COUNT(*) FROM events")
            if events != seen:
                seen, seen_at = events, time.monotonic()
            elif time.monotonic() - seen_at > STUCK and not any(
                c.stopped_at is not None for c in r.consumers
            ):
                res.notes.append(f"no consumer progress for {STUCK:.0f}s: gave up waiting")
                break
        time.sleep(POLL)
    res.producer_rc = r.producer.poll()
    if res.producer_rc is None:
        res.notes.append("producer still running at the deadline")
    _finish(r, reader, routes)


def _ready(r: Run, consumer: Consumer) -> bool:
    assert r.reader is not None
    if consumer.proc is not None and consumer.proc.poll() is not None:
        raise RuntimeError(
            f"consumer {consumer.name} exited with {consumer.proc.returncode}: "
            + (r.workdir / f"{consumer.name}.log").read_text()[-3000:]
        )
    return r.reader.ready(consumer.name, consumer.pid)


def _external_kill(r: Run, start: int) -> int:
    """SIGKILL the next running, not stopped consumer; return where to start next time."""
    n = len(r.consumers)
    for k in range(n):
        consumer = r.consumers[(start + k) % n]
        if consumer.alive and consumer.stopped_at is None:
            assert consumer.proc is not None
            consumer.proc.send_signal(signal.SIGKILL)
            consumer.proc.wait(10)
            r.result.external_kills += 1
            return (start + k + 1) % n
    return start


def qos_of(message_id: str) -> int:
    """The QoS level in a producer's message id (``{run}-q{qos}-{i}``)."""
    return int(message_id.rsplit("-q", 1)[1][0])


def _handle_stops(r: Run, reader: Reader) -> None:
    """SIGCONT a self-stopped consumer once its message was done by another (or after 60 s)."""
    for mid, _, name, pid in reader.event_rows("stopped"):
        if (pid, mid) in r.stops:
            continue
        consumer = next((c for c in r.consumers if c.name == name and c.alive), None)
        if consumer is None or consumer.pid != pid:
            continue
        if consumer.stopped_at is None:
            consumer.stopped_at = time.monotonic()
            r.result.sigstops += 1
        kind = ("commit_ok",) if qos_of(mid) == 2 else ("effect",)
        taken_over = reader.count_for(mid, kind, pid, same=False) > 0
        # Nobody can take over when no other consumer runs: then SIGCONT past the lease.
        others = any(c.alive and c.stopped_at is None for c in r.consumers if c is not consumer)
        limit = STOP_MAX if others else 3 * max(app.LEASE, app.CLAIM_IDLE)
        if taken_over or time.monotonic() - consumer.stopped_at > limit:
            if not taken_over and others:
                r.result.notes.append(f"{mid}: nobody took over from the stopped consumer")
            os.kill(pid, signal.SIGCONT)
            r.stops.add((pid, mid))
            consumer.stopped_at = None


def _stale_settled(r: Run, reader: Reader, pid: int, mid: str) -> bool:
    """Whether a SIGCONTed attempt got to its end (or its process is gone)."""
    if not any(c.alive and c.pid == pid for c in r.consumers):
        return True
    kinds = ("commit_ok", "commit_refused", "commit_error") if qos_of(mid) == 2 else ("effect",)
    return reader.count_for(mid, kinds, pid, same=True) > 0


def _drained(r: Run, reader: Reader, routes: list[str]) -> bool:
    if any(c.stopped_at is not None for c in r.consumers):
        return False
    for q in r.scenario.levels:
        if q == 0:
            continue
        done = reader.handled(q) if q == 1 else reader.committed() | set(reader.commit_tries())
        if not reader.acked(q) <= done:
            return False
    # The stale attempts of SIGCONTed consumers must have got to their end too.
    if not all(_stale_settled(r, reader, pid, mid) for pid, mid in r.stops):
        return False
    try:
        if r.backend == "redis":
            backlog = asyncio.run(_redis_backlog(r.direct_url, r.prefix, routes))
        else:
            backlog = asyncio.run(_nats_backlog(r.direct_url, r.prefix))
    except Exception:
        return False
    return backlog == 0


def _finish(r: Run, reader: Reader, routes: list[str]) -> None:
    res = r.result
    if not res.drained:  # stuck: ask each consumer for its tasks' stacks (in its log)
        for consumer in r.consumers:
            if consumer.alive and consumer.stopped_at is None:
                os.kill(consumer.pid, signal.SIGUSR2)
    res.consumers_expected = len(r.consumers)
    res.consumers_alive = sum(1 for c in r.consumers if c.alive and c.stopped_at is None)
    for consumer in r.consumers:  # graceful stop: in-flight work finishes and is acked
        if consumer.alive:
            assert consumer.proc is not None
            if consumer.stopped_at is not None:
                os.kill(consumer.pid, signal.SIGCONT)
            consumer.proc.send_signal(signal.SIGTERM)
    for consumer in r.consumers:
        if consumer.proc is not None:
            try:
                consumer.proc.wait(15)
            except subprocess.TimeoutExpired:
                res.notes.append(f"consumer {consumer.name} did not stop on SIGTERM")
                log = r.workdir / f"{consumer.name}.log"
                dumps = log.read_text(errors="replace").count("--- task")
                os.kill(consumer.pid, signal.SIGUSR2)  # where it hangs, into its log
                with contextlib.suppress(TimeoutError):
                    wait_until(
                        lambda log=log, n=dumps: (
                            log.read_text(errors="replace").count("--- task") > n
                        ),
                        5.0,
                        "task dump",
                    )
    res.self_kills = reader.count_events("dying")
    # Stale commits: a SIGSTOPped attempt whose message another attempt committed.
    commits = reader.commits()
    for pid, mid in sorted(r.stops):
        if qos_of(mid) != 2:
            continue
        if reader.count_for(mid, ("commit_ok",), pid, same=True) and len(commits[mid]) > 1:
            res.stale_committed += 1
        if reader.count_for(mid, ("commit_refused", "commit_error"), pid, same=True):
            res.stale_refused += 1
    _check_levels(r, reader)
    nats = dict(r.scenario.nats)
    letters = asyncio.run(_dead_letters(r.backend, r.direct_url, r.prefix, routes, nats))
    _check_dlq(r, letters)


def _check_levels(r: Run, reader: Reader) -> None:
    res = r.result
    commits = reader.commits()
    tries = reader.commit_tries()
    for q in r.scenario.levels:
        attempted, acked = reader.attempted(q), reader.acked(q)
        effects = reader.kinds(q, "effect")
        handled = set(effects)
        repeats = sum(1 for n in effects.values() if n > 1)
        invented = handled - attempted
        if q == 2:
            # Resolve commits the ledger may have missed (a kill between the store's
            # answer and the ledger row) from the store itself.
            unresolved = {
                key: mid for mid in acked - set(commits) for key in tries.get(mid, {}).values()
            }
            stored = (
                asyncio.run(
                    _stored_results(
                        r.backend, r.direct_url, r.prefix, sorted(unresolved), dict(r.scenario.nats)
                    )
                )
                if unresolved
                else {}
            )
            committed = {mid: set(a) for mid, a in commits.items()}
            for key, attempt in stored.items():
                committed.setdefault(unresolved[key], set()).add(attempt)
            lost = sorted(acked - set(committed))
            dups = sorted(mid for mid, attempts in committed.items() if len(attempts) > 1)
            invented |= set(committed) - attempted
        else:
            lost = sorted(acked - handled)
            dups = []
        res.levels.append(
            LevelResult(
                qos=q,
                sent=len(attempted),
                acked=len(acked),
                indeterminate=len(attempted - acked),
                handled=len(handled),
                lost=len(lost),
                duplicates=len(dups),
                repeats=repeats,
                invented=len(invented),
                lost_ids=lost[:20],
                duplicate_ids=dups[:20],
            )
        )


def _check_dlq(r: Run, letters: list[Any]) -> None:
    res = r.result
    res.bad_injected = len(r.tags)
    found = set()
    for letter in letters:
        text = letter.envelope.message_id + letter.envelope.body.decode(errors="replace")
        matched = [tag for tag in r.tags if tag in text]
        if matched and letter.reason:
            found.update(matched)
        elif letter.envelope.message_id.startswith(r.prefix):
            res.good_in_dlq += 1
    res.bad_in_dlq = len(found)
    res.bad_missing = sorted(set(r.tags) - found)
