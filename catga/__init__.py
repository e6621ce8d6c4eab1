"""catga: an asyncio mediator/CQRS framework with MQTT-style quality of service.

``await mediator.send(command)`` runs a command's one handler and returns its result;
``await mediator.publish(event)`` runs every handler of an event. Each message has a
QoS (at most once, at least once, exactly once) that catga keeps in process and over
the in-memory, Redis and NATS transports.
"""

from __future__ import annotations

from . import exceptions, typing
from ._behaviors import (
    DeadLetterBehavior,
    LoggingBehavior,
    RetryBehavior,
    TimeoutBehavior,
    ValidationBehavior,
)
from ._chains import Order
from ._container import CatgaContainer, ContainerResolver
from ._dead_letters import DeadLetterEntry, InMemoryDeadLetterQueue
from ._idempotency import IdempotencyBehavior
from ._mediator import Mediator
from ._memory_broker import InMemoryBroker, InMemoryTransportOptions
from ._memory_store import InMemoryIdempotencyStore
from ._memory_transport import InMemoryTransport
from ._messages import Command, Event, Message, message_name, new_message_id
from ._options import CatgaOptions, IdempotencyOptions, RetryPolicy
from ._pipeline import Context, NoResolver, Resolver
from ._qos import QoS
from ._registry import HandlerInfo, HandlerRegistry, handles
from ._serializer import JsonSerializer
from ._worker import Worker, WorkerHealth, WorkerState
from .exceptions import CatgaError
from .typing import Behavior, Envelope, IdempotencyStore, Serializer, Transport

__all__ = [
    "Behavior",
    "CatgaContainer",
    "CatgaError",
    "CatgaOptions",
    "Command",
    "ContainerResolver",
    "Context",
    "DeadLetterBehavior",
    "DeadLetterEntry",
    "Envelope",
    "Event",
    "HandlerInfo",
    "HandlerRegistry",
    "IdempotencyBehavior",
    "IdempotencyOptions",
    "IdempotencyStore",
    "InMemoryBroker",
    "InMemoryDeadLetterQueue",
    "InMemoryIdempotencyStore",
    "InMemoryTransport",
    "InMemoryTransportOptions",
    "JsonSerializer",
    "LoggingBehavior",
    "Mediator",
    "Message",
    "NoResolver",
    "Order",
    "QoS",
    "Resolver",
    "RetryBehavior",
    "RetryPolicy",
    "Serializer",
    "TimeoutBehavior",
    "Transport",
    "ValidationBehavior",
    "Worker",
    "WorkerHealth",
    "WorkerState",
    "exceptions",
    "handles",
    "message_name",
    "new_message_id",
    "typing",
]
