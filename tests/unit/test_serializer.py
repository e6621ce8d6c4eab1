"""JsonSerializer: round trips, envelopes, and every failure as SerializationError."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st

from catga import Event, JsonSerializer, Serializer
from catga.exceptions import SerializationError
from catga.typing import Envelope
from tests.strategies import Address, Kitchen, Quote, envelopes, json_values, kitchens, quotes


@frozen(kw_only=True)
class Reading(Event):
    value: float


@frozen(kw_only=True)
class Label(Event):
    text: str


@frozen(kw_only=True)
class Dangling(Event):
    ref: Undefined  # type: ignore[name-defined]  # noqa: F821 - never resolvable


class NotSerializable:
    """A plain class: neither attrs nor msgspec knows how to decode into it."""

    def __init__(self, x: int) -> None:
        self.x = x


SERIALIZER = JsonSerializer()


class TestRoundTrip:
    @given(message=kitchens)
    def test_attrs_message_round_trips(self, message: Kitchen) -> None:
        """Any message with str/int/float/bool/Decimal/datetime/list/dict/None/nested fields."""
        assert SERIALIZER.decode(SERIALIZER.encode(message), Kitchen) == message

    @given(command=quotes)
    def test_command_round_trips(self, command: Quote) -> None:
        """Commands round-trip like events (the result type is not a field)."""
        assert SERIALIZER.decode(SERIALIZER.encode(command), Quote) == command

    @given(value=json_values)
    def test_plain_results_round_trip(self, value: Any) -> None:
        """Results made of JSON values decode back equal as Any."""
        assert SERIALIZER.decode(SERIALIZER.encode(value), Any) == value  # type: ignore[arg-type]

    @given(envelope=envelopes)
    def test_envelope_round_trips_with_any_body(self, envelope: Envelope) -> None:
        """encode_envelope/decode_envelope keep every field, arbitrary body bytes included."""
        assert SERIALIZER.decode_envelope(SERIALIZER.encode_envelope(envelope)) == envelope

    def test_decoded_message_keeps_its_metadata(self) -> None:
        """message_id, correlation_id and created_at survive the wire."""
        message = Label(text="x", message_id="m-1", correlation_id="c-1", created_at=12.5)
        decoded = SERIALIZER.decode(SERIALIZER.encode(message), Label)
        assert (decoded.message_id, decoded.correlation_id, decoded.created_at) == (
            "m-1",
            "c-1",
            12.5,
        )

    def test_decimal_and_datetime_keep_their_types(self) -> None:
        """A Decimal field decodes to an equal Decimal, a datetime to an equal datetime."""
        at = datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=UTC)
        address = Address(street="s", number=1, tags=[])
        decoded = SERIALIZER.decode(
            SERIALIZER.encode(Quote(amounts=[Decimal("0.10")], address=address)), Quote
        )
        assert decoded.amounts == [Decimal("0.10")]
        assert str(decoded.amounts[0]) == "0.10"
        assert SERIALIZER.decode(SERIALIZER.encode(at), datetime) == at

    def test_is_a_serializer(self) -> None:
        """JsonSerializer satisfies the Serializer protocol."""
        assert isinstance(SERIALIZER, Serializer)
        assert SERIALIZER.content_type == "application/json"


class TestFailures:
    @pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"not json", b'{"text": "x"'])
    def test_malformed_bytes(self, data: bytes) -> None:
        """Bytes that are not JSON raise SerializationError."""
        with pytest.raises(SerializationError):
            SERIALIZER.decode(data, Label)

    @pytest.mark.parametrize(
        "data", [b"[]", b'{"text": 5}', b"{}", b'"text"', b'{"text": "x", "created_at": "now"}']
    )
    def test_wrong_shape(self, data: bytes) -> None:
        """JSON that does not fit the type raises SerializationError (a ValueError)."""
        with pytest.raises(SerializationError) as caught:
            SERIALIZER.decode(data, Label)
        assert isinstance(caught.value, ValueError)

    @given(data=st.binary())
    def test_arbitrary_bytes_never_escape_as_other_errors(self, data: bytes) -> None:
        """Any bytes either decode into the type or raise SerializationError."""
        try:
            decoded = SERIALIZER.decode(data, Label)
        except SerializationError:
            return
        assert isinstance(decoded, Label)

    @pytest.mark.parametrize("value", [object(), complex(1, 2), NotSerializable(1)])
    def test_unencodable_value(self, value: Any) -> None:
        """A value JSON cannot carry raises SerializationError naming its type."""
        with pytest.raises(SerializationError, match=type(value).__qualname__):
            SERIALIZER.encode(value)

    def test_unencodable_nested_value(self) -> None:
        """An unencodable value deep inside a message is caught too."""
        with pytest.raises(SerializationError):
            SERIALIZER.encode(Label(text=object()))  # type: ignore[arg-type]

    def test_undecodable_target_type(self) -> None:
        """Asking to decode into a type msgspec cannot build raises SerializationError."""
        with pytest.raises(SerializationError, match="NotSerializable"):
            SERIALIZER.decode(b'{"x": 1}', NotSerializable)

    @pytest.mark.parametrize("target", [42, "Label", Dangling], ids=repr)
    def test_target_that_is_not_a_decodable_type(self, target: Any) -> None:
        """A non-type, or a class with an unresolvable annotation, raises SerializationError."""
        with pytest.raises(SerializationError, match="cannot be decoded"):
            SERIALIZER.decode(b"{}", target)

    @pytest.mark.parametrize(
        "data", [b"", b"[]", b"{}", b'{"message_id": 1}', b'{"message_id": "m", "body": 3}']
    )
    def test_bad_envelope(self, data: bytes) -> None:
        """Malformed or misshapen envelope bytes raise SerializationError."""
        with pytest.raises(SerializationError):
            SERIALIZER.decode_envelope(data)

    def test_unencodable_string_is_a_serialization_error(self) -> None:
        """A str that is not valid Unicode raises SerializationError, not UnicodeEncodeError."""
        with pytest.raises(SerializationError):
            SERIALIZER.encode(Label(text="bad \udcff name"))

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_float_is_refused_or_round_trips(self, value: float) -> None:
        """A non-finite float is either refused by encode or comes back as itself."""
        try:
            data = SERIALIZER.encode(Reading(value=value))
        except SerializationError:
            return
        decoded = SERIALIZER.decode(data, Reading)
        assert decoded.value == value or (math.isnan(value) and math.isnan(decoded.value))
