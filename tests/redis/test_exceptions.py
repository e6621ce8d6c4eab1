"""Every redis-py error becomes a catga error, in one context manager."""

from __future__ import annotations

import inspect

import pytest
from redis import exceptions as redis_errors

from catga.exceptions import CatgaError, StoreError, TransportError
from catga_redis import exceptions
from catga_redis.exceptions import (
    RedisConnectionError,
    RedisStoreConnectionError,
    RedisStoreError,
    RedisStoreTimeoutError,
    RedisTimeoutError,
    RedisTransportError,
    map_redis_errors,
    translate,
)

pytestmark = pytest.mark.redis


def redis_error_classes() -> list[type[redis_errors.RedisError]]:
    """Every RedisError subclass redis-py defines (in its exceptions module)."""
    return [
        cls
        for _, cls in inspect.getmembers(redis_errors, inspect.isclass)
        if issubclass(cls, redis_errors.RedisError)
    ]


def instance(cls: type[Exception]) -> Exception:
    """Build an instance of a redis-py error (some parse their message)."""
    for args in (("boom",), ("MOVED 1 127.0.0.1:7000",), ("1 127.0.0.1:7000",), ()):
        try:
            return cls(*args)
        except Exception:
            continue
    raise AssertionError(f"cannot build {cls}")


@pytest.mark.parametrize("cls", redis_error_classes(), ids=lambda c: c.__name__)
class TestMapping:
    def test_transport_family(self, cls: type[Exception]) -> None:
        """Each redis-py error raises a RedisTransportError whose cause is the original."""
        original = instance(cls)
        with pytest.raises(RedisTransportError) as caught, map_redis_errors(what="op"):
            raise original
        assert caught.value.__cause__ is original
        assert isinstance(caught.value, TransportError)
        assert str(caught.value).startswith("op failed")
        if isinstance(original, redis_errors.TimeoutError):
            assert isinstance(caught.value, RedisTimeoutError)
        elif isinstance(original, redis_errors.ConnectionError):
            assert isinstance(caught.value, RedisConnectionError)

    def test_store_family(self, cls: type[Exception]) -> None:
        """In store mode each redis-py error raises a RedisStoreError."""
        original = instance(cls)
        with pytest.raises(RedisStoreError) as caught, map_redis_errors(store=True):
            raise original
        assert caught.value.__cause__ is original
        assert isinstance(caught.value, StoreError)
        if isinstance(original, redis_errors.TimeoutError):
            assert isinstance(caught.value, RedisStoreTimeoutError)
        elif isinstance(original, redis_errors.ConnectionError):
            assert isinstance(caught.value, RedisStoreConnectionError)


class TestTree:
    def test_builtins_are_kept(self) -> None:
        """Connection and timeout errors are also the matching builtins."""
        assert issubclass(RedisConnectionError, ConnectionError)
        assert issubclass(RedisTimeoutError, TimeoutError)
        assert issubclass(RedisStoreConnectionError, ConnectionError)
        assert issubclass(RedisStoreTimeoutError, TimeoutError)
        classes = [getattr(exceptions, n) for n in exceptions.__all__ if n[0].isupper()]
        assert all(issubclass(cls, CatgaError) for cls in classes)

    def test_translate_returns_without_raising(self) -> None:
        """translate() gives the catga error for an error handed over (not raised)."""
        error = translate(redis_errors.TimeoutError("slow"), store=True, what="claim")
        assert isinstance(error, RedisStoreTimeoutError)
        assert str(error) == "claim failed: TimeoutError: slow"

    def test_other_errors_pass_through(self) -> None:
        """An error that is not redis-py's is not translated."""
        with pytest.raises(KeyError), map_redis_errors():
            raise KeyError("x")

    def test_connection_error_says_what_to_check(self) -> None:
        """An unreachable server's error says to check the server and URL."""
        with pytest.raises(RedisConnectionError, match="URL"), map_redis_errors():
            raise redis_errors.ConnectionError("refused")
