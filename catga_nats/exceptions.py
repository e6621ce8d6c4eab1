"""How NATS driver errors surface: as catga errors, translated in one place.

::

    catga.exceptions.TransportError
    ├── NatsConnectionError (ConnectionError)   no connection to a NATS server right now
    ├── NatsJetStreamError                      JetStream refused a request (``.code``)
    └── PublishTimeoutError (TimeoutError)      no PubAck in time (from catga.exceptions)
    catga.exceptions.StoreError
    └── NatsStoreError                          the KV store failed (``.code`` when known)

Every driver error keeps its original as ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from catga.exceptions import CatgaError, PublishTimeoutError, StoreError, TransportError

__all__ = [
    "NatsConnectionError",
    "NatsJetStreamError",
    "NatsStoreError",
    "translate_errors",
]


class NatsConnectionError(TransportError, ConnectionError):
    """The client has no working connection to a NATS server (closed, reconnecting, none)."""


class NatsJetStreamError(TransportError):
    """JetStream refused or failed a request; ``code`` is the server's error code, if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class NatsStoreError(StoreError):
    """The KV idempotency store failed; ``code`` is the server's error code, if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


# Most specific first: the first matching row decides.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
)
TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
)
API_ERRORS: tuple[type[Exception], ...] = (nats.js.errors.APIError,)
OTHER_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error,)
MAPPED: tuple[type[Exception], ...] = CONNECTION_ERRORS + TIMEOUT_ERRORS + API_ERRORS + OTHER_ERRORS


def translate(exc: Exception, *, store: bool = False, what: str = "") -> CatgaError:
    """Return the catga error for a driver error.

    Args:
        exc: a ``nats`` error.
        store: map to :class:`NatsStoreError` (the KV store) instead of a transport error.
        what: the operation, for the message.
    """
    text = f"{type(exc).__name__}: {_describe(exc)}"
    text = f"{what}: {text}" if what else text
    code = getattr(exc, "err_code", None) if isinstance(exc, nats.js.errors.APIError) else None
    if store:
        return NatsStoreError(text, code)
    if isinstance(exc, CONNECTION_ERRORS):
        return NatsConnectionError(text)
    if isinstance(exc, TIMEOUT_ERRORS):
        return PublishTimeoutError(f"{text} (the message may or may not be stored)")
    return NatsJetStreamError(text, code)


def _describe(exc: Exception) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - some driver errors cannot print without their fields
        return repr(exc.args)


@contextlib.contextmanager
def translate_errors(what: str = "", *, store: bool = False) -> Iterator[None]:
    """Re-raise NATS driver errors (and driver timeouts) as catga errors, ``from`` the original.

    Args:
        what: the operation, named in the message.
        store: the caller is the idempotency store (``StoreError``), not the transport.

    Raises:
        NatsConnectionError: no connection.
        PublishTimeoutError: no answer from JetStream in time.
        NatsJetStreamError: JetStream refused the request.
        NatsStoreError: any of these, from the store.
    """
    try:
        yield
    except MAPPED as exc:
        raise translate(exc, store=store, what=what) from exc
    except TimeoutError as exc:  # the driver's own waits raise the builtin
        raise translate(nats.errors.TimeoutError(), store=store, what=what) from exc
