"""The QoS 2 idempotency store on JetStream KV: leases in one bucket, results in another.

nats-server 2.9 ignores per-key TTL, so each bucket has its own TTL (the upper bound)
and every record also carries its own expiry, checked on read:

* claim: ``create`` in the lease bucket (compare-and-set); the winner then checks the
  done bucket, because a finished attempt deletes its lease. A loser reads the done
  bucket (``Done``), else takes over an expired lease with ``update(last=revision)``,
  else ``InProgress``.
* complete: proves ownership, by the lease's remaining time when this store won it
  recently, else with a fencing ``update(last=revision)`` (a stale owner's revision is
  gone); then ``create`` in the done bucket: only one result is ever committed per key
  while it is kept. The lease record is then deleted without awaiting the answer.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from catga.typing import Acquired, ClaimResult, Done, InProgress

from ._config import NatsConfig
from ._setup import ensure_bucket, open_client
from .exceptions import translate_errors

__all__ = ["NatsIdempotencyStore"]

logger = structlog.get_logger(__name__)

T = TypeVar("T")

_REVISIONS_KEPT = 10_000
_CLAIM_ROUNDS = 3
_FRESH_MIN = 1.0  # seconds of lease left below which complete() fences


class _Lease(msgspec.Struct, frozen=True, array_like=True):
    owner: str
    expires: float


class _Held(msgspec.Struct, frozen=True):
    """What this store knows of a lease it won: enough to skip a read."""

    token: str
    revision: int
    expires: float
    lease: float


class _Result(msgspec.Struct, frozen=True, array_like=True):
    result: bytes
    expires: float


_enc = msgspec.msgpack.Encoder()
_lease = msgspec.msgpack.Decoder(_Lease)
_result = msgspec.msgpack.Decoder(_Result)


def _kv_key(key: str) -> str:
    # KV keys allow [-/_=.a-zA-Z0-9]; base64url keeps any key distinct and valid.
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=") or "_"


class NatsIdempotencyStore:
    """An :class:`~catga.typing.IdempotencyStore` on two JetStream KV buckets.

    Connects on first use (or call :meth:`connect`), creating the buckets if needed.
    Results are committed with a compare-and-set, so a key is completed at most once
    while its result is kept; the honest limit is the window between the owner check
    and that commit (see ``docs/backends/nats.md``).

    Args:
        config: servers, bucket names and TTLs.
        client: an open NATS connection to share (not closed by :meth:`aclose`).
    """

    def __init__(self, config: NatsConfig | None = None, *, client: Client | None = None) -> None:
        self.config = config if config is not None else NatsConfig()
        self._client = client
        self._owns_client = client is None
        self._leases: KeyValue | None = None
        self._done: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._warned = False

    async def connect(self) -> None:
        """Connect (unless given a client) and create or check both buckets.

        Raises:
            ConfigurationError: a bucket exists with other settings.
            NatsStoreError: the server refused or is unreachable.
        """
        async with self._lock:
            if self._done is not None:
                return
            with translate_errors("connecting the idempotency store", store=True):
                if self._client is None:
                    self._client = await open_client(self.config, "store")
                js = self._client.jetstream()
                storage = StorageType(self.config.storage)
                self._leases = await ensure_bucket(
                    js,
                    KeyValueConfig(
                        bucket=self.config.lease_bucket_name,
                        ttl=self.config.lease_ttl,
                        storage=StorageType(self.config.lease_storage),
                        history=1,
                        direct=True,
                    ),
                )
                self._done = await ensure_bucket(
                    js,
                    KeyValueConfig(
                        bucket=self.config.done_bucket_name,
                        ttl=self.config.done_ttl,
                        storage=storage,
                        history=1,
                        direct=True,
                    ),
                )

    async def aclose(self) -> None:
        """Close the connection if this store opened it; idempotent."""
        client, self._client = self._client, (None if self._owns_client else self._client)
        self._leases = self._done = None
        if self._owns_client and client is not None and not client.is_closed:
            await client.close()

    async def _buckets(self) -> tuple[KeyValue, KeyValue]:
        if self._leases is None or self._done is None:
            await self.connect()
        assert self._leases is not None
        assert self._done is not None
        return self._leases, self._done

    async def claim(self, key: str, lease: float) -> ClaimResult:
        """Take ``key`` for ``lease`` seconds, or report it busy or done.

        Raises:
            NatsStoreError: the server failed.
        """
        self._check_lease(lease)
        return await self._retry("claim", self._claim, key, lease)

    async def extend(self, key: str, token: str, lease: float) -> bool:
        """Renew a held lease; ``False`` when ``token`` no longer owns it."""
        self._check_lease(lease)
        return await self._retry("extend", self._extend, key, token, lease)

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Commit ``result`` (kept ``ttl`` s, at most the bucket TTL) if ``token`` owns the key.

        Returns:
            ``False`` if ``token`` is not the owner or another attempt committed first.
        """
        return await self._retry("complete", self._complete, key, token, result, ttl)

    async def release(self, key: str, token: str) -> None:
        """Give the key up after a failed attempt (only if ``token`` still owns it)."""
        await self._retry("release", self._release, key, token)

    async def _retry(self, what: str, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``op``; once more after re-creating the buckets if one is gone.

        A memory bucket (``lease_storage="memory"``) vanishes when nats-server restarts.
        """
        with translate_errors(what, store=True):
            try:
                return await op(*args)
            except _MAYBE_GONE as exc:
                if not _bucket_gone(exc):
                    raise
                logger.warning(
                    "KV bucket gone (server restarted?): re-creating it", error=repr(exc)
                )
            self._leases = self._done = None
            await self.connect()
            return await op(*args)

    async def _claim(self, key: str, lease: float) -> ClaimResult:
        leases, done = await self._buckets()
        k = _kv_key(key)
        token = uuid.uuid4().hex
        expires = time.time() + lease
        value = _enc.encode(_Lease(token, expires))
        held = _Held(token, 0, expires, lease)
        for _ in range(_CLAIM_ROUNDS):
            try:
                revision = await leases.create(k, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            else:
                return await self._acquired(k, held, revision)
            stored = await _get_result(done, k)
            if stored is not None:
                return Done(stored)
            current = await _get(leases, k)
            if current is None:
                continue  # deleted since our create: try again
            entry_revision, holder = current
            if holder.expires > time.time():
                return InProgress()
            try:
                revision = await leases.update(k, value, last=entry_revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return InProgress()
            return await self._acquired(k, held, revision)
        return InProgress()

    async def _acquired(self, k: str, held: _Held, revision: int) -> ClaimResult:
        # A finished attempt deletes its lease after committing, so a lease just won
        # may hide a result: check before running the handler again.
        _, done = await self._buckets()
        stored = await _get_result(done, k)
        if stored is not None:
            await _delete(await self._lease_bucket(), k, revision)
            return Done(stored)
        self._remember(k, msgspec.structs.replace(held, revision=revision))
        return Acquired(held.token)

    async def _extend(self, key: str, token: str, lease: float) -> bool:
        leases = await self._lease_bucket()
        k = _kv_key(key)
        revision = await self._owned(leases, k, token)
        if revision is None:
            return False
        expires = time.time() + lease
        try:
            new = await leases.update(k, _enc.encode(_Lease(token, expires)), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self._forget(k)
            return False
        self._remember(k, _Held(token, new, expires, lease))
        return True

    async def _complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        leases, done = await self._buckets()
        k = _kv_key(key)
        revision = await self._fence(leases, k, token)
        if revision is None:
            return False
        committed = await _commit(done, k, _enc.encode(_Result(result, time.time() + ttl)))
        self._forget(k)
        await self._drop_lease(k, revision)
        if not committed:
            logger.error("idempotency result already committed by another attempt", key=key)
        return committed

    async def _release(self, key: str, token: str) -> None:
        leases = await self._lease_bucket()
        k = _kv_key(key)
        revision = await self._owned(leases, k, token)
        if revision is not None:
            self._forget(k)
            await _delete(leases, k, revision)

    async def _drop_lease(self, k: str, revision: int) -> None:
        """Delete our lease record without waiting for the server's answer.

        Only an optimisation: the result is committed already, and a claim that wins a
        lease checks the done bucket before running the handler.
        """
        assert self._client is not None
        await self._client.publish(
            f"$KV.{self.config.lease_bucket_name}.{k}",
            b"",
            headers={"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(revision)},
        )

    async def _lease_bucket(self) -> KeyValue:
        leases, _ = await self._buckets()
        return leases

    async def _fence(self, leases: KeyValue, k: str, token: str) -> int | None:
        """Prove ``token`` owns the lease; return its revision, or ``None`` if it does not.

        A lease this store won that still has a good part of its time left (by this
        host's clock) cannot have been taken over, so no round trip is spent; otherwise a
        fencing ``update(last=revision)`` proves it. Either way only one result can be
        committed: the done record is created with a compare-and-set.
        """
        held = self._held.get(k)
        if held is not None and held.token == token:
            left = held.expires - time.time()
            if left > max(_FRESH_MIN, held.lease / 4):
                return held.revision
        revision = await self._owned(leases, k, token)
        if revision is None:
            return None
        fence = _enc.encode(_Lease(token, time.time() + self.config.lease_ttl))
        try:
            return await leases.update(k, fence, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self._forget(k)
            return None

    async def _owned(self, leases: KeyValue, k: str, token: str) -> int | None:
        """Return the revision of our lease record, or ``None`` if ``token`` does not own it."""
        held = self._held.get(k)
        if held is not None and held.token == token:
            return held.revision
        current = await _get(leases, k)
        if current is None or current[1].owner != token:
            return None
        return current[0]

    def _remember(self, k: str, held: _Held) -> None:
        self._held[k] = held
        self._held.move_to_end(k)
        while len(self._held) > _REVISIONS_KEPT:
            self._held.popitem(last=False)

    def _forget(self, k: str) -> None:
        self._held.pop(k, None)

    def _check_lease(self, lease: float) -> None:
        if lease > self.config.lease_ttl and not self._warned:
            self._warned = True
            logger.warning(
                "lease longer than the lease bucket's TTL: it ends at the TTL",
                lease=lease,
                lease_ttl=self.config.lease_ttl,
            )


_MAYBE_GONE = (
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
    nats.js.errors.NotFoundError,
)
_STREAM_NOT_FOUND = 10059


def _bucket_gone(exc: Exception) -> bool:
    if isinstance(exc, nats.js.errors.KeyNotFoundError):
        return False
    if isinstance(exc, nats.js.errors.NotFoundError):
        return exc.err_code == _STREAM_NOT_FOUND
    return True


async def _get(bucket: KeyValue, k: str) -> tuple[int, _Lease] | None:
    try:
        entry = await bucket.get(k)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.revision or 0, _lease.decode(entry.value or b"")


async def _get_result(bucket: KeyValue, k: str) -> bytes | None:
    try:
        entry = await bucket.get(k)
    except nats.js.errors.KeyNotFoundError:
        return None
    record = _result.decode(entry.value or b"")
    return record.result if record.expires > time.time() else None


async def _commit(bucket: KeyValue, k: str, value: bytes) -> bool:
    """Create the result record; replace it only if the one there has expired."""
    try:
        await bucket.create(k, value)
    except nats.js.errors.KeyWrongLastSequenceError:
        try:
            entry = await bucket.get(k)
        except nats.js.errors.KeyNotFoundError:
            return False
        if _result.decode(entry.value or b"").expires > time.time():
            return False
        try:
            await bucket.update(k, value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
    return True


async def _delete(bucket: KeyValue, k: str, revision: int) -> None:
    """Delete a lease record only if it is still at ``revision`` (ours)."""
    try:
        await bucket.delete(k, last=revision)
    except nats.js.errors.APIError as exc:
        if exc.err_code not in (10071, 10164):  # wrong last sequence: no longer ours
            raise
