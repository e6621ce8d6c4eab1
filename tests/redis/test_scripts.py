"""The Lua scripts on a real server: dedup, owner checks, claim, trim, consumer cleanup."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from catga_redis._scripts import Scripts

pytestmark = pytest.mark.redis

GROUP, ME, OTHER = "g", "me", "other"


@pytest.fixture
def scripts(client: Redis) -> Scripts:
    return Scripts(client)


@pytest.fixture
def key(prefix: str) -> str:
    return f"{prefix}:s"


async def read_one(client: Redis, key: str, consumer: str = ME) -> bytes:
    """Create the group if needed and read one new entry as ``consumer``; return its id."""
    if not await client.exists(key) or not await client.xinfo_groups(key):
        await client.xgroup_create(key, GROUP, id="0", mkstream=True)
    reply = await client.xreadgroup(GROUP, consumer, {key: ">"}, count=1)
    return reply[0][1][0][0]  # type: ignore[no-any-return]


async def pending(client: Redis, key: str, entry_id: bytes) -> dict[str, object] | None:
    found = await client.xpending_range(key, GROUP, entry_id, entry_id, 1)
    return found[0] if found else None


class TestPublishOnce:
    async def test_adds_each_id_once(self, client: Redis, scripts: Scripts, key: str) -> None:
        """Of three ids, one repeated, two entries are added."""
        keys = [key, f"{key}:d1", f"{key}:d2", f"{key}:d1"]
        added = await scripts.publish_once(keys=keys, args=[60_000, b"a", b"b", b"c"])
        assert added == 2
        assert [f[b"m"] for _, f in await client.xrange(key)] == [b"a", b"b"]


class TestTouch:
    async def test_owner_sets_idle_keeping_the_count(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """The owner's touch sets the idle time and leaves the delivery count at 1."""
        await client.xadd(key, {"m": b"x"})
        entry = await read_one(client, key)
        assert await scripts.touch(keys=[key], args=[GROUP, ME, entry, 1, 50_000]) == 1
        info = await pending(client, key, entry)
        assert info is not None
        assert info["times_delivered"] == 1
        assert int(info["time_since_delivered"]) >= 50_000  # type: ignore[call-overload]

    async def test_stale_owner_is_refused(self, client: Redis, scripts: Scripts, key: str) -> None:
        """After another consumer took the entry over, the old owner cannot touch it."""
        await client.xadd(key, {"m": b"x"})
        entry = await read_one(client, key)
        await client.xclaim(key, GROUP, OTHER, 0, [entry])
        assert await scripts.touch(keys=[key], args=[GROUP, ME, entry, 1, 0]) == 0
        assert await scripts.touch(keys=[key], args=[GROUP, OTHER, entry, 1, 0]) == 0
        assert await scripts.touch(keys=[key], args=[GROUP, OTHER, entry, 2, 0]) == 1


class TestDeadLetter:
    async def test_copies_fields_with_reason_and_acks(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """The entry's fields and why land in the DLQ stream; the entry is acked."""
        await client.xadd(key, {"m": b"x"})
        entry = await read_one(client, key)
        args = [GROUP, ME, entry, 1, "bad", "12.5", 100]
        assert await scripts.dead_letter(keys=[key, f"{key}:dlq"], args=args) == 1
        [(_, fields)] = await client.xrange(f"{key}:dlq")
        assert fields[b"m"] == b"x"
        assert (fields[b"catga-reason"], fields[b"catga-count"]) == (b"bad", b"1")
        assert fields[b"catga-id"] == entry
        assert await pending(client, key, entry) is None

    async def test_stale_owner_is_refused(self, client: Redis, scripts: Scripts, key: str) -> None:
        """A consumer that no longer holds the entry cannot dead-letter it."""
        await client.xadd(key, {"m": b"x"})
        entry = await read_one(client, key)
        await client.xclaim(key, GROUP, OTHER, 0, [entry])
        args = [GROUP, ME, entry, 1, "bad", "0", 100]
        assert await scripts.dead_letter(keys=[key, f"{key}:dlq"], args=args) == 0
        assert await client.xlen(f"{key}:dlq") == 0


class TestClaim:
    async def test_returns_counts_and_dead_letters_past_the_limit(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """Idle entries come back with their new count; one past max_deliveries is dead-lettered."""
        await client.xadd(key, {"m": b"young"})
        young = await read_one(client, key)
        await client.xadd(key, {"m": b"old"})
        old = await read_one(client, key)
        await client.xclaim(key, GROUP, ME, 0, [old], retrycount=3)
        args = [GROUP, OTHER, 0, "0-0", 10, 3, "max deliveries (3) exceeded", "1.0", 100]
        cursor, found, dead = await scripts.claim(keys=[key, f"{key}:dlq"], args=args)
        assert cursor == b"0-0"
        assert [(e[0], e[2]) for e in found] == [(young, 2)]
        assert dead == 1
        [(_, fields)] = await client.xrange(f"{key}:dlq")
        assert (fields[b"m"], fields[b"catga-count"]) == (b"old", b"3")


class TestTrim:
    async def test_never_trims_pending_or_unread(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """With no retention, acked entries go but the pending and the unread stay."""
        ids = [await client.xadd(key, {"m": str(i)}) for i in range(4)]
        await client.xgroup_create(key, GROUP, id="0")
        await client.xgroup_create(key, "slow", id="0")
        await client.xreadgroup(GROUP, ME, {key: ">"}, count=4)
        await client.xack(key, GROUP, ids[0], ids[1], ids[3])  # ids[2] stays pending
        await client.xreadgroup("slow", ME, {key: ">"}, count=3)
        await client.xack(key, "slow", *ids[:3])  # "slow" has not read ids[3]
        # A negative retention puts the age floor in the future: only the groups limit it.
        assert await scripts.trim(keys=[key], args=[-60_000, 3_600_000]) == 2
        assert [e[0] for e in await client.xrange(key)] == ids[2:]

    async def test_retention_keeps_young_entries(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """Acked entries younger than the retention are kept for late groups."""
        entry = await client.xadd(key, {"m": b"x"})
        await client.xgroup_create(key, GROUP, id="0")
        await client.xreadgroup(GROUP, ME, {key: ">"})
        await client.xack(key, GROUP, entry)
        assert await scripts.trim(keys=[key], args=[3_600_000, 3_600_000]) == 0

    async def test_missing_stream_or_no_group(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """No stream, or a stream nobody consumes: nothing is trimmed."""
        assert await scripts.trim(keys=[key], args=[1, 1]) == 0
        await client.xadd(key, {"m": b"x"})
        assert await scripts.trim(keys=[key], args=[1, 1]) == 0

    async def test_forgets_idle_consumers_without_pending(
        self, client: Redis, scripts: Scripts, key: str
    ) -> None:
        """A consumer idle past the limit with nothing pending goes; one with pending stays."""
        await client.xadd(key, {"m": b"x"})
        await read_one(client, key, consumer=ME)  # ME holds a pending entry
        await client.xreadgroup(GROUP, OTHER, {key: ">"})  # OTHER holds nothing
        await scripts.trim(keys=[key], args=[3_600_000, -1])
        assert [c["name"] for c in await client.xinfo_consumers(key, GROUP)] == [ME.encode()]


class TestForgetConsumer:
    async def test_only_without_pending(self, client: Redis, scripts: Scripts, key: str) -> None:
        """A consumer with a pending entry is kept; once it has none it is removed."""
        await client.xadd(key, {"m": b"x"})
        entry = await read_one(client, key)
        assert await scripts.forget_consumer(keys=[key], args=[GROUP, ME]) == 0
        await client.xack(key, GROUP, entry)
        await scripts.forget_consumer(keys=[key], args=[GROUP, ME])
        assert await client.xinfo_consumers(key, GROUP) == []
        assert await scripts.forget_consumer(keys=[f"{key}:none"], args=[GROUP, ME]) == 0
