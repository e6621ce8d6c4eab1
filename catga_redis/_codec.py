"""Envelopes in stream entries and pub/sub messages: one msgpack field.

One field holding the msgpack-encoded envelope measured fastest here (encode 0.2 µs,
decode 0.3 µs) against the JSON envelope (0.4 / 0.4 µs, body base64-encoded) and one
stream field per envelope attribute (0.7 / 0.7 µs, and more for Redis to parse).
"""

from __future__ import annotations

import msgspec

from catga.exceptions import SerializationError
from catga.typing import Envelope

__all__ = [
    "FIELD",
    "decode",
    "decode_entry",
    "decode_reply",
    "encode",
    "encode_reply",
    "garbage_envelope",
]

FIELD = b"m"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_reply_decoder = msgspec.msgpack.Decoder(tuple[str, Envelope])


def encode(envelope: Envelope) -> bytes:
    """Return the envelope as msgpack bytes."""
    return _encoder.encode(envelope)


def decode(data: bytes) -> Envelope:
    """Decode msgpack bytes into an envelope.

    Raises:
        SerializationError: not an envelope.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"not a catga envelope: {exc}") from exc


def decode_entry(fields: dict[bytes, bytes]) -> Envelope:
    """Decode a stream entry's fields into its envelope.

    Raises:
        SerializationError: no envelope field, or one that does not decode.
    """
    data = fields.get(FIELD)
    if data is None:
        names = ", ".join(sorted(f.decode(errors="replace") for f in fields)) or "none"
        raise SerializationError(f"entry has no {FIELD.decode()!r} field (fields: {names})")
    return decode(data)


def encode_reply(request_id: str, reply: Envelope) -> bytes:
    """Frame a reply with the id of the request it answers (replies may carry their own id)."""
    return _encoder.encode((request_id, reply))


def decode_reply(data: bytes) -> tuple[str, Envelope]:
    """Return ``(request id, reply)`` from a reply frame.

    Raises:
        SerializationError: not a reply frame.
    """
    try:
        return _reply_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"not a catga reply: {exc}") from exc


def garbage_envelope(entry_id: str, fields: dict[bytes, bytes]) -> Envelope:
    """Stand in for an entry that holds no envelope, so it can be listed as a dead letter."""
    readable = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    return Envelope(
        message_id=entry_id,
        message_type="",
        body=msgspec.json.encode(readable),
        headers={"catga-undecodable": "true"},
    )
