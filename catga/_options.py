"""Options: small frozen value objects with validators."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen, validators

from ._qos import QoS

__all__ = ["CatgaOptions", "IdempotencyOptions", "RetryPolicy"]

_positive = validators.gt(0.0)
_non_negative = validators.ge(0.0)


def _optional_positive(_: Any, attribute: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


def _exception_types(_: Any, attribute: Any, value: tuple[type[BaseException], ...]) -> None:
    for item in value:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{attribute.name} must hold exception classes, got {item!r}")


@frozen(kw_only=True)
class RetryPolicy:
    """How a failing handler is retried at QoS >= 1.

    Args:
        max_attempts: attempts in all, the first included; then the message is dead-lettered.
        initial_delay: seconds before the second attempt.
        max_delay: cap on any one delay.
        multiplier: growth of the delay per attempt.
        jitter: fraction of each delay drawn at random (0 = none, 1 = "full jitter").
        retry_on: exception types that are retried; others fail at once.
        never_retry: exception types that are never retried, even if in ``retry_on``.
    """

    max_attempts: int = field(default=3, validator=validators.ge(1))
    initial_delay: float = field(default=0.05, validator=_non_negative)
    max_delay: float = field(default=5.0, validator=_non_negative)
    multiplier: float = field(default=2.0, validator=validators.ge(1))
    jitter: float = field(default=0.5, validator=[validators.ge(0), validators.le(1)])
    retry_on: tuple[type[BaseException], ...] = field(
        default=(Exception,), converter=tuple, validator=_exception_types
    )
    never_retry: tuple[type[BaseException], ...] = field(
        default=(), converter=tuple, validator=_exception_types
    )

    def delay(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        except OverflowError:  # thousands of attempts: the cap applies
            base = self.max_delay
        return base * (1 - self.jitter * random.random())

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Return whether ``exc`` on attempt ``attempt`` earns another attempt."""
        if attempt >= self.max_attempts or isinstance(exc, self.never_retry):
            return False
        return isinstance(exc, self.retry_on)


@frozen(kw_only=True)
class IdempotencyOptions:
    """Exactly-once (QoS 2) settings.

    Args:
        lease: seconds an attempt holds a message id before another may take over;
            renewed while the handler runs.
        retention: seconds a completed result is kept to answer duplicates.
        wait_for_duplicate: seconds a duplicate waits for the attempt in progress
            before :class:`~catga.exceptions.InProgressError`.
    """

    lease: float = field(default=30.0, validator=_positive)
    retention: float = field(default=24 * 3600.0, validator=_positive)
    wait_for_duplicate: float = field(default=30.0, validator=_non_negative)


def _qos(value: int | QoS) -> QoS:
    return QoS(value)


@frozen(kw_only=True)
class CatgaOptions:
    """Options of a mediator.

    Args:
        default_qos: QoS of messages whose type and call do not set one.
        retry: default retry policy for QoS >= 1.
        timeout: default seconds per handler attempt (``None``: no timeout).
        idempotency: QoS 2 settings.
        routes: message type, or module name prefix, to transport route. Types not
            matched are dispatched in process.
        request_timeout: seconds ``send`` waits for a remote reply.
        dead_letter_limit: how many in-process dead letters are kept (oldest dropped).
        log_handled: log every handled message at debug (~8 µs each when emitted);
            failures are always logged.
    """

    default_qos: QoS = field(default=QoS.AT_LEAST_ONCE, converter=_qos)
    retry: RetryPolicy = field(factory=RetryPolicy)
    timeout: float | None = field(default=None, validator=_optional_positive)
    idempotency: IdempotencyOptions = field(factory=IdempotencyOptions)
    routes: Mapping[type[Any] | str, str] = field(factory=dict)
    request_timeout: float = field(default=30.0, validator=_positive)
    dead_letter_limit: int = field(default=10_000, validator=validators.ge(1))
    log_handled: bool = False
