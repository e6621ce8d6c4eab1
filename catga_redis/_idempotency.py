"""The idempotency store on Redis: one key per message, leased by token, then done."""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from catga.typing import Acquired, ClaimResult, Done, InProgress

from ._config import RedisConfig
from ._scripts import STORE_CLAIM, STORE_UPDATE
from .exceptions import map_redis_errors

__all__ = ["RedisIdempotencyStore", "make_client"]

_IN_PROGRESS = InProgress()


def make_client(config: RedisConfig) -> Redis:
    """Return a redis-py asyncio client for ``config`` (connections are opened on use)."""
    return Redis.from_url(
        config.url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_connect_timeout,
        decode_responses=False,
    )


class RedisIdempotencyStore:
    """An :class:`~catga.typing.IdempotencyStore` in Redis keys ``{prefix}:idem:{key}``.

    ``claim`` is ``SET NX PX``-like (in Lua, so a done key answers with its result in
    the same round trip); ``extend``, ``complete`` and ``release`` compare the owner
    token in Lua, so a stale owner is refused. Keys expire with their lease or ttl;
    the server must run ``maxmemory-policy noeviction`` or they may vanish early.

    Args:
        config: URL and key prefix (and timeouts).
        client: share an existing client instead of opening one; it is not closed
            by :meth:`aclose`.
    """

    def __init__(self, config: RedisConfig | None = None, *, client: Redis | None = None) -> None:
        self.config = config if config is not None else RedisConfig()
        self._owns_client = client is None
        self._client = make_client(self.config) if client is None else client
        self._claim = self._client.register_script(STORE_CLAIM)
        self._update = self._client.register_script(STORE_UPDATE)
        self._prefix = f"{self.config.prefix}:idem:"
        self._closed = False

    async def claim(self, key: str, lease: float) -> ClaimResult:
        """Take the key for ``lease`` seconds, or report it busy or done.

        Raises:
            RedisStoreError: Redis failed (a subclass says whether it was unreachable).
        """
        token = secrets.token_hex(8)
        with map_redis_errors(store=True, what="idempotency claim"):
            reply = await self._claim(
                keys=[self._prefix + key], args=[token, self.config.ms(lease)]
            )
        if reply[0] == 1:
            return Acquired(token)
        if reply[0] == 2:
            return Done(bytes(reply[1]))
        return _IN_PROGRESS

    async def extend(self, key: str, token: str, lease: float) -> bool:
        """Renew the lease if ``token`` still owns the key."""
        return await self._owned(key, token, "extend", lease)

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Store the result for ``ttl`` seconds if ``token`` still owns the key."""
        return await self._owned(key, token, "complete", ttl, result)

    async def release(self, key: str, token: str) -> None:
        """Drop the lease if ``token`` still owns it."""
        await self._owned(key, token, "release", 0.0)

    async def aclose(self) -> None:
        """Close the client (unless it was passed in); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def _owned(
        self, key: str, token: str, op: str, seconds: float, result: bytes = b""
    ) -> bool:
        with map_redis_errors(store=True, what=f"idempotency {op}"):
            done = await self._update(
                keys=[self._prefix + key], args=[token, op, self.config.ms(seconds), result]
            )
        return bool(done)
