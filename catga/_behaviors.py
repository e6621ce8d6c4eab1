"""The built-in pipeline behaviours, in the order they wrap a handler (outermost first)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs
import structlog

from ._dead_letters import InMemoryDeadLetterQueue
from ._options import RetryPolicy
from .exceptions import (
    ConfigurationError,
    DependencyError,
    HandlerNotFoundError,
    InProgressError,
    RegistrationError,
    SerializationError,
    ValidationError,
)
from .typing import Next

__all__ = [
    "DeadLetterBehavior",
    "LoggingBehavior",
    "RetryBehavior",
    "TimeoutBehavior",
    "ValidationBehavior",
]

logger = structlog.get_logger("catga")

# Errors no retry can fix; the caller sees them at once and they are not dead-lettered.
PERMANENT_ERRORS = (
    ConfigurationError,
    DependencyError,
    HandlerNotFoundError,
    InProgressError,
    RegistrationError,
    SerializationError,
    ValidationError,
)


def _fields(message: Any, ctx: Any) -> dict[str, Any]:
    return {
        "message_type": ctx.message_type.__qualname__,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id or message.message_id,
        "qos": int(ctx.qos),
        "handler": ctx.handler.name,
        "attempt": ctx.attempt,
    }


class LoggingBehavior:
    """Logs every failure with type, ids, QoS, attempt and duration; successes only if asked.

    A success line costs ~8 µs when emitted, so it is off unless ``log_handled`` is
    set (``CatgaOptions.log_handled``); failures are always logged.
    """

    def __init__(self, *, log_handled: bool = False) -> None:
        self.log_handled = log_handled

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        start = time.perf_counter()
        try:
            result = await next(message, ctx)
        except Exception as exc:
            logger.error(
                "handler failed",
                **_fields(message, ctx),
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
                error=repr(exc),
            )
            raise
        if self.log_handled:
            logger.debug(
                "handled",
                **_fields(message, ctx),
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
            )
        return result


class ValidationBehavior:
    """Re-runs the message's attrs validators and its ``validate()`` method, if any.

    Construction already ran the validators (msgspec runs them when decoding too);
    this catches instances built with validation off and checks ``validate()``.
    Failures raise :class:`~catga.exceptions.ValidationError` and are never retried.
    """

    @staticmethod
    def applies_to(message_type: type[Any]) -> bool:
        """Return whether the type has anything to validate (else the step is left out)."""
        has_validators = attrs.has(message_type) and any(
            f.validator is not None for f in attrs.fields(message_type)
        )
        return has_validators or callable(getattr(message_type, "validate", None))

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        try:
            attrs.validate(message)
            check = getattr(message, "validate", None)
            if check is not None:
                check()
        except ValidationError:
            raise
        except (ValueError, TypeError) as exc:
            raise ValidationError(type(message), str(exc)) from exc
        return await next(message, ctx)


class DeadLetterBehavior:
    """Puts a message whose handler failed for good in the dead-letter queue, then re-raises.

    Errors that retrying can never fix and that the caller sees at once (validation,
    a missing dependency) are not dead-lettered.
    """

    def __init__(self, queue: InMemoryDeadLetterQueue) -> None:
        self.queue = queue

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        try:
            return await next(message, ctx)
        except PERMANENT_ERRORS:
            raise
        except Exception as exc:
            self.queue.add(message, ctx, exc)
            raise


class RetryBehavior:
    """Retries a failing handler with exponential backoff and jitter (QoS >= 1, in process)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        policy = self.policy
        while True:
            try:
                return await next(message, ctx)
            except PERMANENT_ERRORS:
                raise
            except Exception as exc:
                if not policy.should_retry(exc, ctx.attempt):
                    raise
                delay = policy.delay(ctx.attempt)
                logger.warning(
                    "handler failed, retrying",
                    **_fields(message, ctx),
                    delay=delay,
                    error=repr(exc),
                )
                await asyncio.sleep(delay)
                ctx.attempt += 1


class TimeoutBehavior:
    """Fails an attempt that takes longer than ``seconds`` with ``TimeoutError`` (retryable)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __call__(self, message: Any, ctx: Any, next: Next) -> Any:
        async with asyncio.timeout(self.seconds):
            return await next(message, ctx)
