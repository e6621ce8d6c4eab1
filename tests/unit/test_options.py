"""Options: validated value objects, and the retry policy's decisions."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from catga import CatgaOptions, IdempotencyOptions, QoS, RetryPolicy


class TestRetryPolicy:
    def test_defaults(self) -> None:
        """Three attempts, retrying any Exception, never-retry empty."""
        policy = RetryPolicy()
        assert policy.max_attempts == 3
        assert policy.retry_on == (Exception,)
        assert policy.never_retry == ()

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_attempts": 0},
            {"initial_delay": -0.1},
            {"max_delay": -1.0},
            {"multiplier": 0.5},
            {"jitter": -0.1},
            {"jitter": 1.5},
        ],
    )
    def test_rejects_out_of_range_values(self, kwargs: dict[str, float]) -> None:
        """Impossible numbers are refused when the policy is made."""
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]

    def test_rejects_non_exception_types(self) -> None:
        """retry_on / never_retry take exception classes only."""
        with pytest.raises(TypeError, match="retry_on"):
            RetryPolicy(retry_on=(int,))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="never_retry"):
            RetryPolicy(never_retry=(ValueError, "KeyError"))  # type: ignore[arg-type]

    def test_exception_lists_become_tuples(self) -> None:
        """A list of exception types is stored as a tuple."""
        policy = RetryPolicy(retry_on=[ConnectionError, TimeoutError])  # type: ignore[arg-type]
        assert policy.retry_on == (ConnectionError, TimeoutError)

    def test_is_frozen(self) -> None:
        """A policy cannot be changed after it is made."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            RetryPolicy().max_attempts = 9  # type: ignore[misc]

    def test_should_retry_until_max_attempts(self) -> None:
        """Attempts below max_attempts are retried; the last one is not."""
        policy = RetryPolicy(max_attempts=3)
        assert policy.should_retry(RuntimeError(), 1)
        assert policy.should_retry(RuntimeError(), 2)
        assert not policy.should_retry(RuntimeError(), 3)

    def test_retry_on_limits_what_is_retried(self) -> None:
        """Only exceptions in retry_on earn another attempt."""
        policy = RetryPolicy(retry_on=(ConnectionError,))
        assert policy.should_retry(ConnectionResetError(), 1)
        assert not policy.should_retry(ValueError(), 1)

    def test_never_retry_wins_over_retry_on(self) -> None:
        """An exception in never_retry is not retried even though retry_on matches it."""
        policy = RetryPolicy(retry_on=(Exception,), never_retry=(KeyError,))
        assert not policy.should_retry(KeyError("k"), 1)
        assert policy.should_retry(IndexError(), 1)

    def test_delay_without_jitter_grows_and_is_capped(self) -> None:
        """Without jitter the delay is initial * multiplier**(attempt-1), capped by max_delay."""
        policy = RetryPolicy(initial_delay=0.1, multiplier=2.0, max_delay=0.5, jitter=0.0)
        assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == pytest.approx(
            [0.1, 0.2, 0.4, 0.5, 0.5]
        )

    def test_delay_for_late_attempts_is_capped(self) -> None:
        """A long-retrying policy keeps returning max_delay instead of overflowing."""
        policy = RetryPolicy(max_attempts=10_000, max_delay=5.0, jitter=0.0)
        assert policy.delay(2_000) == 5.0

    @given(
        initial=st.floats(0, 10),
        multiplier=st.floats(1, 4),
        max_delay=st.floats(0, 30),
        jitter=st.floats(0, 1),
        attempt=st.integers(1, 40),
    )
    def test_delay_stays_within_the_jitter_band(
        self, initial: float, multiplier: float, max_delay: float, jitter: float, attempt: int
    ) -> None:
        """Every delay lies in [(1 - jitter) * base, base] with base capped by max_delay."""
        policy = RetryPolicy(
            initial_delay=initial, multiplier=multiplier, max_delay=max_delay, jitter=jitter
        )
        base = min(max_delay, initial * multiplier ** (attempt - 1))
        delay = policy.delay(attempt)
        assert 0.0 <= delay <= max_delay
        assert (1 - jitter) * base - 1e-9 <= delay <= base + 1e-9


class TestIdempotencyOptions:
    def test_defaults(self) -> None:
        """A 30 s lease, a day of retention, 30 s of waiting for a duplicate."""
        options = IdempotencyOptions()
        assert (options.lease, options.retention, options.wait_for_duplicate) == (
            30.0,
            86_400.0,
            30.0,
        )

    @pytest.mark.parametrize("kwargs", [{"lease": 0}, {"retention": 0}, {"wait_for_duplicate": -1}])
    def test_rejects_out_of_range_values(self, kwargs: dict[str, float]) -> None:
        """Leases and retention must be positive; waiting may be zero but not negative."""
        with pytest.raises(ValueError):
            IdempotencyOptions(**kwargs)

    def test_zero_wait_is_allowed(self) -> None:
        """wait_for_duplicate=0 means: fail a busy duplicate at once."""
        assert IdempotencyOptions(wait_for_duplicate=0).wait_for_duplicate == 0


class TestCatgaOptions:
    def test_defaults(self) -> None:
        """At least once, no timeout, no routes, a bounded dead-letter queue."""
        options = CatgaOptions()
        assert options.default_qos is QoS.AT_LEAST_ONCE
        assert options.timeout is None
        assert options.routes == {}
        assert options.dead_letter_limit == 10_000
        assert options.log_handled is False

    def test_default_qos_accepts_an_int(self) -> None:
        """default_qos=2 is converted to QoS.EXACTLY_ONCE."""
        assert CatgaOptions(default_qos=2).default_qos is QoS.EXACTLY_ONCE  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"default_qos": 3},
            {"timeout": 0},
            {"timeout": -1.0},
            {"request_timeout": 0},
            {"dead_letter_limit": 0},
        ],
    )
    def test_rejects_bad_values(self, kwargs: dict[str, object]) -> None:
        """Unknown QoS levels and non-positive timeouts or limits are refused."""
        with pytest.raises(ValueError):
            CatgaOptions(**kwargs)  # type: ignore[arg-type]

    def test_timeout_none_means_no_timeout(self) -> None:
        """timeout=None is valid and means handler attempts are not limited."""
        assert CatgaOptions(timeout=None).timeout is None
        assert CatgaOptions(timeout=2.5).timeout == 2.5

    def test_is_frozen(self) -> None:
        """Options cannot be changed after they are made."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            CatgaOptions().timeout = 1.0  # type: ignore[misc]
