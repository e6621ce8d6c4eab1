"""The bytes on NATS subjects: one msgpack blob per envelope, and the headers around it."""

from __future__ import annotations

import msgspec

from catga.exceptions import SerializationError
from catga.typing import Envelope

__all__ = ["DEAD_AT", "DELIVERIES", "MSG_ID", "ORIGINAL_ID", "REASON", "decode", "encode"]

MSG_ID = "Nats-Msg-Id"
REASON = "Catga-Reason"
DELIVERIES = "Catga-Delivery-Count"
DEAD_AT = "Catga-Dead-Lettered-At"
ORIGINAL_ID = "Catga-Original-Id"

# One msgpack blob instead of headers: nats-py parses headers in Python, msgspec
# decodes the whole envelope in one C call, and the body stays raw bytes.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    """Encode an envelope for the wire."""
    return _encoder.encode(envelope)


def decode(data: bytes) -> Envelope:
    """Decode an envelope from the wire.

    Raises:
        SerializationError: the bytes are not an envelope.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"undecodable envelope ({len(data)} bytes): {exc}") from exc
