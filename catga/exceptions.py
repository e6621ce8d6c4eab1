"""The errors catga raises.

Every error derives from :class:`CatgaError`; where a builtin means the same
thing, the error subclasses it too, so ``except TimeoutError`` keeps working::

    CatgaError
    ├── ConfigurationError (ValueError)     bad options, impossible combinations
    ├── RegistrationError (ValueError)      a handler that cannot be registered
    ├── HandlerNotFoundError (LookupError)  ``send`` with no handler
    ├── MessageKindError (TypeError)        an Event sent, or a Command published
    ├── ValidationError (ValueError)        a message that fails validation
    ├── DependencyError (LookupError)       a handler parameter with no provider
    ├── PublishError                        event handlers that failed (``.errors``)
    ├── RemoteHandlerError                  a handler in another process failed
    ├── InProgressError                     a QoS 2 duplicate still being handled
    ├── SerializationError (ValueError)
    │   └── UnknownMessageTypeError (LookupError)
    ├── StoreError                          an idempotency store failed
    ├── DeadLetterError (LookupError)       a dead letter that does not exist
    └── TransportError
        ├── NotConnectedError               used before ``connect()`` or after ``aclose()``
        ├── QueueFullError                  a bounded queue refused a message
        ├── PublishTimeoutError (TimeoutError)
        └── RequestTimeoutError (TimeoutError)
"""

from __future__ import annotations

__all__ = [
    "CatgaError",
    "ConfigurationError",
    "DeadLetterError",
    "DependencyError",
    "HandlerNotFoundError",
    "InProgressError",
    "MessageKindError",
    "NotConnectedError",
    "PublishError",
    "PublishTimeoutError",
    "QueueFullError",
    "RegistrationError",
    "RemoteHandlerError",
    "RequestTimeoutError",
    "SerializationError",
    "StoreError",
    "TransportError",
    "UnknownMessageTypeError",
    "ValidationError",
]


class CatgaError(Exception):
    """Base of every error catga raises."""


class ConfigurationError(CatgaError, ValueError):
    """Options or wiring that cannot work; raised at start-up, never mid-flight."""


class RegistrationError(CatgaError, ValueError):
    """A handler that cannot be registered (a second handler for a command, a bad signature)."""


class HandlerNotFoundError(CatgaError, LookupError):
    """``send`` of a command that has no handler."""

    def __init__(self, message_type: type) -> None:
        self.message_type = message_type
        super().__init__(
            f"no handler for {message_type.__qualname__}: decorate one with "
            f"@handles({message_type.__name__}) and register it"
        )


class MessageKindError(CatgaError, TypeError):
    """``send`` given something that is not a Command, or ``publish`` not an Event."""


class ValidationError(CatgaError, ValueError):
    """A message failed validation; it is not retried."""

    def __init__(self, message_type: type, reason: str) -> None:
        self.message_type = message_type
        self.reason = reason
        super().__init__(f"{message_type.__qualname__} is invalid: {reason}")


class DependencyError(CatgaError, LookupError):
    """A handler parameter that no provider can supply."""


class PublishError(CatgaError):
    """One or more event handlers failed for good; the others ran to the end.

    Attributes:
        message_id: the event's id.
        errors: ``(handler name, exception)`` for each failed handler.
    """

    def __init__(self, message_id: str, errors: tuple[tuple[str, BaseException], ...]) -> None:
        self.message_id = message_id
        self.errors = errors
        names = ", ".join(f"{name} ({type(exc).__name__}: {exc})" for name, exc in errors)
        super().__init__(f"{len(errors)} handler(s) failed for event {message_id}: {names}")


class RemoteHandlerError(CatgaError):
    """A handler in another process raised; carries the remote type and text."""

    def __init__(self, message_id: str, error_type: str, error_message: str) -> None:
        self.message_id = message_id
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(f"remote handler for {message_id} raised {error_type}: {error_message}")


class InProgressError(CatgaError):
    """A QoS 2 duplicate arrived while another attempt still holds the lease; retry later."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"{key} is being handled by another attempt; it will be answered from the "
            "idempotency store once that attempt completes (retry later)"
        )


class SerializationError(CatgaError, ValueError):
    """Bytes that do not decode into the expected message, or a value that will not encode."""


class UnknownMessageTypeError(SerializationError, LookupError):
    """A message name from the wire that no registered type carries."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"unknown message type {name!r}: register a handler for it or add the type "
            "to the HandlerRegistry (types are resolved only through the registry)"
        )


class StoreError(CatgaError):
    """The idempotency store refused or failed an operation."""


class DeadLetterError(CatgaError, LookupError):
    """A dead letter that is not (or no longer) in the queue."""


class TransportError(CatgaError):
    """A transport failed to move a message."""


class NotConnectedError(TransportError):
    """A resource used before ``connect()`` or after ``aclose()``."""


class QueueFullError(TransportError):
    """A bounded queue stayed full past the publish timeout."""


class PublishTimeoutError(TransportError, TimeoutError):
    """The broker did not confirm a publish in time; the message may or may not be stored."""


class RequestTimeoutError(TransportError, TimeoutError):
    """No reply to a remote command arrived in time."""

    def __init__(self, message_id: str, timeout: float) -> None:
        self.message_id = message_id
        self.timeout = timeout
        super().__init__(
            f"no reply for {message_id} within {timeout}s: is a worker subscribed to its "
            "route? raise the timeout in CatgaOptions if the handler is slow"
        )
