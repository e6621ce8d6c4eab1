"""The errors of catga's Redis backend: redis-py errors translated in one place.

Every redis-py error is raised as a catga error (the original is ``__cause__``)::

    TransportError (catga)
    └── RedisTransportError                   a Redis command failed
        ├── RedisConnectionError (ConnectionError)  Redis unreachable, connection lost
        └── RedisTimeoutError (TimeoutError)        no reply within socket_timeout
    StoreError (catga)
    └── RedisStoreError                        an idempotency store command failed
        ├── RedisStoreConnectionError (ConnectionError)
        └── RedisStoreTimeoutError (TimeoutError)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as redis_errors

from catga.exceptions import StoreError, TransportError

__all__ = [
    "RedisConnectionError",
    "RedisStoreConnectionError",
    "RedisStoreError",
    "RedisStoreTimeoutError",
    "RedisTimeoutError",
    "RedisTransportError",
    "map_redis_errors",
    "translate",
]


class RedisTransportError(TransportError):
    """A Redis command of the transport failed; the server's reply is in the text."""


class RedisConnectionError(RedisTransportError, ConnectionError):
    """Redis cannot be reached or the connection broke; the operation may be retried."""


class RedisTimeoutError(RedisTransportError, TimeoutError):
    """Redis did not answer within ``socket_timeout``; the command may or may not have run."""


class RedisStoreError(StoreError):
    """A Redis command of the idempotency store failed."""


class RedisStoreConnectionError(RedisStoreError, ConnectionError):
    """The idempotency store cannot reach Redis."""


class RedisStoreTimeoutError(RedisStoreError, TimeoutError):
    """The idempotency store got no reply in time; the command may or may not have run."""


_TRANSPORT: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (redis_errors.TimeoutError, RedisTimeoutError),
    (redis_errors.ConnectionError, RedisConnectionError),
    (redis_errors.RedisError, RedisTransportError),
)
_STORE: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (redis_errors.TimeoutError, RedisStoreTimeoutError),
    (redis_errors.ConnectionError, RedisStoreConnectionError),
    (redis_errors.RedisError, RedisStoreError),
)
_HINTS: dict[type[Exception], str] = {
    RedisConnectionError: "is redis-server running and the URL right?",
    RedisStoreConnectionError: "is redis-server running and the URL right?",
}


@contextlib.contextmanager
def map_redis_errors(*, store: bool = False, what: str = "redis") -> Iterator[None]:
    """Raise every redis-py error inside the block as the matching catga error.

    Args:
        store: map to :class:`RedisStoreError` and subclasses instead of transport errors.
        what: the operation, for the message.

    Raises:
        RedisTransportError: (or a subclass) for a redis-py error, when ``store`` is false.
        RedisStoreError: (or a subclass) for a redis-py error, when ``store`` is true.
    """
    try:
        yield
    except redis_errors.RedisError as exc:
        raise translate(exc, store=store, what=what) from exc


def translate(
    exc: redis_errors.RedisError, *, store: bool = False, what: str = "redis"
) -> Exception:
    """Return the catga error for a redis-py error (for errors handed over, not raised).

    The caller sets ``__cause__`` (``raise translate(exc) from exc``, or
    :func:`map_redis_errors`).
    """
    for source, target in _STORE if store else _TRANSPORT:
        if isinstance(exc, source):
            hint = _HINTS.get(target)
            text = f"{what} failed: {type(exc).__name__}: {exc}"
            return target(f"{text} ({hint})" if hint else text)
    raise AssertionError(
        "unreachable: RedisError is the last row of both tables"
    )  # pragma: no cover
