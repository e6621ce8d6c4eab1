"""The built-in behaviours as a mediator runs them: logging, validation, retry, timeout, DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
from attrs import field, frozen, validators
from structlog.testing import capture_logs

from catga import (
    CatgaOptions,
    Command,
    Event,
    HandlerRegistry,
    Mediator,
    QoS,
    RetryPolicy,
    ValidationBehavior,
    handles,
)
from catga.exceptions import PublishError, SerializationError, ValidationError

FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)


def options(**kwargs: Any) -> CatgaOptions:
    """Options with an instant retry policy unless one is given."""
    kwargs.setdefault("retry", FAST)
    return CatgaOptions(**kwargs)


@frozen(kw_only=True)
class Charge(Command[str]):
    amount: int = 1


@frozen(kw_only=True)
class Transfer(Command[str]):
    amount: int = field(validator=validators.gt(0))


@frozen(kw_only=True)
class Refund(Command[str]):
    amount: int

    def validate(self) -> None:
        if self.amount <= 0:
            raise ValueError(f"amount must be positive, got {self.amount}")


@frozen(kw_only=True)
class Patient(Command[str]):
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_attempts=5, initial_delay=0.0, jitter=0.0)


@frozen(kw_only=True)
class Slow(Command[str]):
    timeout: ClassVar[float] = 0.02


@frozen(kw_only=True)
class Audited(Event):
    pass


@handles(Charge, Transfer, Refund, Patient, Slow)
class Flaky:
    """Fails the first ``failures`` calls with ``error``, then returns which call succeeded."""

    def __init__(
        self, failures: int = 0, error: Callable[[str], BaseException] = ConnectionError
    ) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def handle(self, command: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"call {self.calls} failed")
        return f"ok on call {self.calls}"


@handles(Charge, Slow)
class HangsFirst:
    """Never returns on its first ``hangs`` calls (a timeout must end them), then succeeds."""

    def __init__(self, hangs: int = 1) -> None:
        self.hangs = hangs
        self.calls = 0

    async def handle(self, command: Any) -> str:
        self.calls += 1
        if self.calls <= self.hangs:
            await asyncio.Event().wait()
        return f"ok on call {self.calls}"


@handles(Audited)
class AuditFails:
    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, event: Audited) -> None:
        self.calls += 1
        raise RuntimeError("audit down")


class TestLoggingBehavior:
    async def test_failure_is_logged_with_context(self) -> None:
        """A failed handler is logged at error with type, ids, QoS, handler, attempt and error."""
        handler = Flaky(failures=1, error=KeyError)
        command = Charge(correlation_id="conv-1")
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
                with pytest.raises(KeyError):
                    await mediator.send(command, qos=0)
        (entry,) = [e for e in logs if e["event"] == "handler failed"]
        assert entry["log_level"] == "error"
        assert entry["message_type"] == "Charge"
        assert entry["message_id"] == command.message_id
        assert entry["correlation_id"] == "conv-1"
        assert entry["qos"] == 0
        assert entry["handler"] == f"{__name__}.Flaky"
        assert entry["attempt"] == 1
        assert "call 1 failed" in entry["error"]
        assert entry["duration_ms"] >= 0

    async def test_correlation_id_defaults_to_the_message_id_in_logs(self) -> None:
        """A message that starts a conversation logs its own id as the correlation id."""
        command = Charge()
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(Flaky(1)), options=options()) as mediator:
                with pytest.raises(ConnectionError):
                    await mediator.send(command, qos=0)
        assert logs[-1]["correlation_id"] == command.message_id

    async def test_success_is_silent_by_default(self) -> None:
        """Handled messages are not logged unless log_handled is set."""
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(Flaky()), options=options()) as mediator:
                await mediator.send(Charge())
        assert logs == []

    async def test_success_is_logged_at_debug_when_asked(self) -> None:
        """With log_handled=True each handled message is logged at debug."""
        command = Charge()
        with capture_logs() as logs:
            async with Mediator(
                HandlerRegistry(Flaky()), options=options(log_handled=True)
            ) as mediator:
                await mediator.send(command)
        (entry,) = logs
        assert entry["event"] == "handled"
        assert entry["log_level"] == "debug"
        assert entry["message_id"] == command.message_id


class TestValidationBehavior:
    async def test_validate_method_failure_is_a_validation_error(self) -> None:
        """A failing validate() raises ValidationError; the handler never runs."""
        handler = Flaky()
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(ValidationError) as caught:
                await mediator.send(Refund(amount=0))
        assert caught.value.message_type is Refund
        assert "amount must be positive" in caught.value.reason
        assert isinstance(caught.value, ValueError)
        assert handler.calls == 0

    async def test_validation_error_is_not_retried_or_dead_lettered(self) -> None:
        """An invalid message fails at once at QoS 1: no retry, no dead letter."""
        handler = Flaky()
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
                with pytest.raises(ValidationError):
                    await mediator.send(Refund(amount=-5), qos=QoS.AT_LEAST_ONCE)
        assert len(mediator.dead_letters) == 0
        assert not [e for e in logs if e["event"] == "handler failed, retrying"]

    async def test_attrs_validators_are_rerun(self) -> None:
        """A message made with validators off (as when decoded) is still validated."""
        with attrs.validators.disabled():
            transfer = Transfer(amount=-1)
        handler = Flaky()
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(ValidationError, match="amount"):
                await mediator.send(transfer)
        assert handler.calls == 0

    async def test_valid_message_reaches_the_handler(self) -> None:
        """A valid message passes validation unchanged."""
        async with Mediator(HandlerRegistry(Flaky()), options=options()) as mediator:
            assert await mediator.send(Refund(amount=5)) == "ok on call 1"
            assert await mediator.send(Transfer(amount=5)) == "ok on call 2"

    async def test_handler_raising_validation_error_is_not_retried(self) -> None:
        """A ValidationError from the handler itself is permanent too."""
        handler = Flaky(failures=5, error=_validation_error)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(ValidationError):
                await mediator.send(Charge())
        assert handler.calls == 1
        assert len(mediator.dead_letters) == 0

    def test_applies_only_to_types_with_something_to_check(self) -> None:
        """Types with neither attrs validators nor validate() get no validation step."""
        assert ValidationBehavior.applies_to(Transfer)
        assert ValidationBehavior.applies_to(Refund)
        assert not ValidationBehavior.applies_to(Charge)


def _validation_error(text: str) -> ValidationError:
    return ValidationError(Charge, text)


class TestRetryBehavior:
    async def test_flaky_handler_succeeds_on_retry(self) -> None:
        """At QoS 1 a failing attempt is retried until it succeeds."""
        handler = Flaky(failures=2)
        with capture_logs() as logs:
            async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
                assert await mediator.send(Charge()) == "ok on call 3"
        assert handler.calls == 3
        retries = [e for e in logs if e["event"] == "handler failed, retrying"]
        assert [e["attempt"] for e in retries] == [1, 2]
        assert all(e["log_level"] == "warning" for e in retries)
        assert len(mediator.dead_letters) == 0

    async def test_exhausted_retries_dead_letter_and_raise_the_original(self) -> None:
        """After max_attempts the message is dead-lettered and the last error is raised."""
        handler = Flaky(failures=10)
        command = Charge(amount=7)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(ConnectionError, match="call 3 failed"):
                await mediator.send(command)
        assert handler.calls == 3
        (entry,) = mediator.dead_letters.entries()
        assert entry.message is command
        assert entry.attempts == 3
        assert entry.qos == 1
        assert entry.handler == f"{__name__}.Flaky"
        assert entry.reason == "ConnectionError: call 3 failed"
        assert isinstance(entry.error, ConnectionError)

    async def test_qos0_is_never_retried(self) -> None:
        """At QoS 0 a send runs the handler once and raises its error; nothing is dead-lettered."""
        handler = Flaky(failures=1)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(ConnectionError):
                await mediator.send(Charge(), qos=QoS.AT_MOST_ONCE)
        assert handler.calls == 1
        assert len(mediator.dead_letters) == 0

    async def test_retry_on_limits_what_is_retried(self) -> None:
        """An error outside retry_on fails the first attempt and is dead-lettered."""
        policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0, retry_on=(OSError,))
        handler = Flaky(failures=1, error=LookupError)
        async with Mediator(HandlerRegistry(handler), options=options(retry=policy)) as mediator:
            with pytest.raises(LookupError):
                await mediator.send(Charge())
        assert handler.calls == 1
        assert [e.attempts for e in mediator.dead_letters.entries()] == [1]

    async def test_never_retry_is_respected(self) -> None:
        """An error in never_retry is not retried even though retry_on covers it."""
        policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0, never_retry=(KeyError,))
        handler = Flaky(failures=1, error=KeyError)
        async with Mediator(HandlerRegistry(handler), options=options(retry=policy)) as mediator:
            with pytest.raises(KeyError):
                await mediator.send(Charge())
        assert handler.calls == 1

    async def test_type_retry_policy_overrides_the_options(self) -> None:
        """A type's retry ClassVar replaces CatgaOptions.retry for that type."""
        handler = Flaky(failures=4)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            assert await mediator.send(Patient()) == "ok on call 5"

    async def test_serialization_error_is_permanent(self) -> None:
        """A SerializationError is neither retried nor dead-lettered."""
        handler = Flaky(failures=5, error=SerializationError)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(SerializationError):
                await mediator.send(Charge())
        assert handler.calls == 1
        assert len(mediator.dead_letters) == 0

    async def test_event_handler_exhausted_is_wrapped_in_publish_error(self) -> None:
        """At QoS 1 an event handler is retried, then dead-lettered, then reported."""
        handler = AuditFails()
        event = Audited()
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(PublishError) as caught:
                await mediator.publish(event)
        assert handler.calls == 3
        ((name, error),) = caught.value.errors
        assert name == f"{__name__}.AuditFails"
        assert isinstance(error, RuntimeError)
        assert caught.value.message_id == event.message_id
        assert [e.message for e in mediator.dead_letters.entries()] == [event]


class TestTimeoutBehavior:
    async def test_options_timeout_fails_the_attempt_and_retries(self) -> None:
        """An attempt past CatgaOptions.timeout raises TimeoutError and is retried."""
        handler = HangsFirst(hangs=1)
        async with Mediator(HandlerRegistry(handler), options=options(timeout=0.02)) as mediator:
            assert await mediator.send(Charge()) == "ok on call 2"
        assert handler.calls == 2

    async def test_type_timeout_classvar(self) -> None:
        """A type's timeout ClassVar applies when the options set none."""
        handler = HangsFirst(hangs=2)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            assert await mediator.send(Slow()) == "ok on call 3"

    async def test_timeouts_exhaust_retries(self) -> None:
        """An attempt that always times out ends in TimeoutError and a dead letter."""
        handler = HangsFirst(hangs=10)
        async with Mediator(HandlerRegistry(handler), options=options()) as mediator:
            with pytest.raises(TimeoutError):
                await mediator.send(Slow())
        assert handler.calls == 3
        assert [e.attempts for e in mediator.dead_letters.entries()] == [3]

    async def test_qos0_timeout_raises_at_once(self) -> None:
        """At QoS 0 the timeout still applies; the error reaches the caller unretried."""
        handler = HangsFirst(hangs=1)
        async with Mediator(HandlerRegistry(handler), options=options(timeout=0.02)) as mediator:
            with pytest.raises(TimeoutError):
                await mediator.send(Charge(), qos=0)
        assert handler.calls == 1
