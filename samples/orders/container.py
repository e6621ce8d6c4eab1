"""The application's container: its services, plus catga's own providers composed in."""

from __future__ import annotations

from dependency_injector import containers, providers

from catga import CatgaContainer, CatgaOptions, HandlerRegistry, RetryPolicy

from . import services


class AppContainer(containers.DeclarativeContainer):
    """Services by name: handler parameters named ``payments``, ``mailer``… get these."""

    __self__ = providers.Self()
    payments = providers.Singleton(services.PaymentGateway)
    mailer = providers.Singleton(services.Mailer)
    inventory = providers.Singleton(services.Inventory)
    analytics = providers.Singleton(services.Analytics)
    uow = providers.Factory(services.unit_of_work)  # an async generator: one per message

    catga = providers.Container(
        CatgaContainer,
        options=providers.Singleton(
            CatgaOptions, retry=RetryPolicy(max_attempts=3, initial_delay=0.01)
        ),
        registry=providers.Singleton(HandlerRegistry.from_modules, "samples.orders.handlers"),
        services=__self__,
    )
