"""Driver errors become catga errors in one context manager."""

from __future__ import annotations

import inspect

import nats.errors
import nats.js.errors
import pytest

from catga.exceptions import PublishTimeoutError, StoreError, TransportError
from catga_nats.exceptions import (
    MAPPED,
    NatsConnectionError,
    NatsJetStreamError,
    NatsStoreError,
    translate_errors,
)


def driver_errors() -> list[type[Exception]]:
    found = []
    for module in (nats.errors, nats.js.errors):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, nats.errors.Error):
                found.append(cls)
    return found


def make(cls: type[Exception]) -> Exception:
    try:
        return cls()
    except TypeError:
        return cls.__new__(cls)


class TestTranslateErrors:
    @pytest.mark.parametrize("cls", driver_errors(), ids=lambda c: f"{c.__module__}.{c.__name__}")
    def test_every_driver_error_is_mapped(self, cls: type[Exception]) -> None:
        """Every nats-py error class becomes a TransportError, chained to the original."""
        assert issubclass(cls, MAPPED)
        error = make(cls)
        with pytest.raises(TransportError) as caught, translate_errors("op"):
            raise error
        assert caught.value.__cause__ is error
        assert "op" in str(caught.value)

    @pytest.mark.parametrize("cls", driver_errors(), ids=lambda c: f"{c.__module__}.{c.__name__}")
    def test_every_driver_error_is_a_store_error_in_the_store(self, cls: type[Exception]) -> None:
        """In the store, every nats-py error becomes a NatsStoreError."""
        with pytest.raises(NatsStoreError), translate_errors("claim", store=True):
            raise make(cls)

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (nats.errors.ConnectionClosedError(), NatsConnectionError),
            (nats.errors.NoServersError(), NatsConnectionError),
            (nats.errors.TimeoutError(), PublishTimeoutError),
            (nats.js.errors.NoStreamResponseError(), PublishTimeoutError),
            (TimeoutError(), PublishTimeoutError),
            (
                nats.js.errors.APIError(code=400, err_code=10058, description="x"),
                NatsJetStreamError,
            ),
        ],
    )
    def test_kinds(self, error: Exception, expected: type[Exception]) -> None:
        """Connection, timeout and API errors keep their meaning (and builtin bases)."""
        with pytest.raises(expected), translate_errors():
            raise error

    def test_api_error_code_is_kept(self) -> None:
        """The server's error code survives translation."""
        with pytest.raises(NatsJetStreamError) as caught, translate_errors():
            raise nats.js.errors.APIError(code=400, err_code=10058, description="in use")
        assert caught.value.code == 10058

    def test_other_errors_pass_through(self) -> None:
        """Errors that are not the driver's are not touched."""
        with pytest.raises(KeyError), translate_errors():
            raise KeyError("x")

    def test_store_errors_are_store_errors(self) -> None:
        """NatsStoreError is a catga StoreError."""
        assert issubclass(NatsStoreError, StoreError)
        assert issubclass(NatsConnectionError, ConnectionError)
