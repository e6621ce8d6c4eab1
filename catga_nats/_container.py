"""A dependency-injector container for the NATS backend."""

from __future__ import annotations

from dependency_injector import containers, providers

from ._config import NatsConfig
from ._idempotency import NatsIdempotencyStore
from ._transport import NatsTransport

__all__ = ["NatsContainer"]


class NatsContainer(containers.DeclarativeContainer):
    """Provides a :class:`NatsConfig`, a :class:`NatsTransport` and a :class:`NatsIdempotencyStore`.

    Plug it into :class:`catga.CatgaContainer` by composition::

        class AppContainer(containers.DeclarativeContainer):
            nats = providers.Container(
                NatsContainer,
                config=providers.Singleton(NatsConfig, servers=["nats://10.0.0.5:4222"]),
            )
            catga = providers.Container(
                CatgaContainer,
                transport=nats.transport,
                idempotency_store=nats.idempotency_store,
            )

        app = AppContainer()
        await app.nats.transport().connect()   # async: connect before the first message
        mediator = app.catga.mediator()

    Both are singletons; close them on shutdown (``await transport.aclose()``,
    ``await store.aclose()``).
    """

    config = providers.Singleton(NatsConfig)
    transport = providers.Singleton(NatsTransport, config=config)
    idempotency_store = providers.Singleton(NatsIdempotencyStore, config=config)
