"""Dependency-injector wiring for the Redis backend."""

from __future__ import annotations

from dependency_injector import containers, providers

from ._config import RedisConfig
from ._idempotency import RedisIdempotencyStore
from ._transport import RedisTransport

__all__ = ["RedisContainer"]


class RedisContainer(containers.DeclarativeContainer):
    """Provides the Redis config, transport and idempotency store, one of each.

    Compose it next to :class:`catga.CatgaContainer` and hand its providers over::

        class AppContainer(containers.DeclarativeContainer):
            redis = providers.Container(
                RedisContainer, config=providers.Object(RedisConfig(url="redis://redis:6379/0"))
            )
            catga = providers.Container(
                CatgaContainer,
                transport=redis.transport,
                idempotency_store=redis.idempotency_store,
            )

        app = AppContainer()
        await app.redis.transport().connect()   # before the mediator or a worker uses it
        mediator = app.catga.mediator()

    The transport opens its own connections (one blocking reader per subscription,
    one pub/sub connection); the store keeps a small pool. Close both on shutdown:
    ``await app.redis.transport().aclose()`` and ``await app.redis.idempotency_store().aclose()``.
    """

    config = providers.Singleton(RedisConfig)
    transport = providers.Singleton(RedisTransport, config=config)
    idempotency_store = providers.Singleton(RedisIdempotencyStore, config=config)
