"""The ledger: one SQLite file outside the system under test that every process writes to.

Each process opens its own connection (WAL mode, autocommit): a row is in the file
once the insert returns, so a row written just before a SIGKILL is kept. Tables:

* ``sent``: one row per publish attempt: ``acked`` (publish returned) or
  ``indeterminate`` (it raised or timed out; the broker may or may not have it).
* ``events``: what consumers did: ``start`` (handler entered), ``effect`` (the
  handler's external side effect), ``commit_try`` / ``commit_ok`` / ``commit_refused`` /
  ``commit_error`` (the QoS 2 result written through the idempotency store),
  ``stopped`` (about to SIGSTOP itself), ``dying`` (about to SIGKILL itself).
* ``procs``: consumer life: ``ready`` and periodic ``health`` rows.
* ``injected``: bad input written on the wire by the harness, with a tag to find it.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (id TEXT, qos INT, outcome TEXT, error TEXT, ts REAL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT, qos INT, kind TEXT, attempt TEXT, consumer TEXT, pid INT, info TEXT, ts REAL
);
CREATE TABLE IF NOT EXISTS procs (
    consumer TEXT, pid INT, kind TEXT, healthy INT, handled INT, dead INT, ts REAL
);
CREATE TABLE IF NOT EXISTS injected (tag TEXT, route TEXT, what TEXT, ts REAL);
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """Open the ledger (creating its tables); autocommit, WAL, generous busy timeout."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA)
    return conn


class Writer:
    """A process's handle on the ledger."""

    def __init__(self, path: Path | str, consumer: str = "", pid: int = 0) -> None:
        self.conn = connect(path)
        self.consumer, self.pid = consumer, pid

    def sent(self, message_id: str, qos: int, outcome: str, error: str = "") -> None:
        self.conn.execute(
            "INSERT INTO sent VALUES (?, ?, ?, ?, ?)",
            (message_id, qos, outcome, error, time.time()),
        )

    def event(self, message_id: str, qos: int, kind: str, attempt: str, info: str = "") -> None:
        self.conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, qos, kind, attempt, self.consumer, self.pid, info, time.time()),
        )

    def proc(self, kind: str, healthy: bool = True, handled: int = 0, dead: int = 0) -> None:
        self.conn.execute(
            "INSERT INTO procs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.consumer, self.pid, kind, int(healthy), handled, dead, time.time()),
        )

    def injected(self, tag: str, route: str, what: str) -> None:
        self.conn.execute(
            "INSERT INTO injected VALUES (?, ?, ?, ?)", (tag, route, what, time.time())
        )

    def close(self) -> None:
        self.conn.close()


class Reader:
    """Queries the harness runs while a scenario goes and when it is over."""

    def __init__(self, path: Path | str) -> None:
        self.conn = connect(path)

    def close(self) -> None:
        self.conn.close()

    def scalar(self, sql: str, *args: object) -> int:
        row = self.conn.execute(sql, args).fetchone()
        return int(row[0] or 0)

    def acked_count(self) -> int:
        return self.scalar("SELECT COUNT(DISTINCT id) FROM sent WHERE outcome = 'acked'")

    def attempted_count(self) -> int:
        return self.scalar("SELECT COUNT(DISTINCT id) FROM sent")

    def ids(self, sql: str, *args: object) -> set[str]:
        return {row[0] for row in self.conn.execute(sql, args)}

    def acked(self, qos: int) -> set[str]:
        return self.ids("SELECT id FROM sent WHERE qos = ? AND outcome = 'acked'", qos)

    def attempted(self, qos: int) -> set[str]:
        return self.ids("SELECT id FROM sent WHERE qos = ?", qos)

    def failed_attempts(self, qos: int) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM sent WHERE qos = ? AND outcome = 'indeterminate'", qos
        )

    def kinds(self, qos: int, kind: str) -> Counter[str]:
        """How many ``kind`` events each id has."""
        rows = self.conn.execute("SELECT id FROM events WHERE qos = ? AND kind = ?", (qos, kind))
        return Counter(row[0] for row in rows)

    def handled(self, qos: int) -> set[str]:
        return self.ids("SELECT id FROM events WHERE qos = ? AND kind = 'effect'", qos)

    def committed(self, qos: int = 2) -> set[str]:
        return self.ids("SELECT id FROM events WHERE qos = ? AND kind = 'commit_ok'", qos)

    def commits(self) -> dict[str, set[str]]:
        """id -> the attempts whose commit the store accepted."""
        out: dict[str, set[str]] = defaultdict(set)
        for mid, attempt in self.conn.execute(
            "SELECT id, attempt FROM events WHERE kind = 'commit_ok'"
        ):
            out[mid].add(attempt)
        return out

    def commit_tries(self) -> dict[str, dict[str, str]]:
        """id -> {attempt: store key} of every commit that was tried."""
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for mid, attempt, key in self.conn.execute(
            "SELECT id, attempt, info FROM events WHERE kind = 'commit_try'"
        ):
            out[mid][attempt] = key
        return out

    def count_events(self, kind: str) -> int:
        return self.scalar("SELECT COUNT(*) FROM events WHERE kind = ?", kind)

    def event_rows(self, kind: str) -> list[tuple[str, str, str, int]]:
        return list(
            self.conn.execute(
                "SELECT id, attempt, consumer, pid FROM events WHERE kind = ?", (kind,)
            )
        )

    def count_for(self, message_id: str, kinds: tuple[str, ...], pid: int, *, same: bool) -> int:
        """How many ``kinds`` rows ``message_id`` has from ``pid`` (``same``) or other pids."""
        marks = ",".join("?" * len(kinds))
        op = "=" if same else "!="
        return self.scalar(
            f"SELECT COUNT(*) FROM events WHERE id = ? AND kind IN ({marks}) AND pid {op} ?",
            message_id,
            *kinds,
            pid,
        )

    def ready(self, consumer: str, pid: int) -> bool:
        return bool(
            self.scalar(
                "SELECT COUNT(*) FROM procs WHERE consumer = ? AND pid = ? AND kind = 'ready'",
                consumer,
                pid,
            )
        )

    def last_health(self, consumer: str, pid: int) -> tuple[bool, float] | None:
        row = self.conn.execute(
            "SELECT healthy, ts FROM procs WHERE consumer = ? AND pid = ? AND kind = 'health' "
            "ORDER BY ts DESC LIMIT 1",
            (consumer, pid),
        ).fetchone()
        return None if row is None else (bool(row[0]), float(row[1]))

    def injected(self) -> list[tuple[str, str, str]]:
        return list(self.conn.execute("SELECT tag, route, what FROM injected"))
