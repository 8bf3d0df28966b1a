"""Encodes AWS event-stream frames; test-side only (amq itself never writes frames)."""
from __future__ import annotations

import datetime
import json
import struct
import uuid
import zlib

# Event-stream timestamps count milliseconds from here.
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

# Header type codes (docs/event-stream.md, "Headers").
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)


def _encode_header_value(value) -> bytes:
    if value is True:
        return bytes([_BOOL_TRUE])
    if value is False:
        return bytes([_BOOL_FALSE])
    if isinstance(value, tuple):  # explicit (type_code, value) for the numeric kinds
        code, raw = value
        fmt = {_BYTE: ">b", _SHORT: ">h", _INT: ">i", _LONG: ">q", _TIMESTAMP: ">q"}[code]
        return bytes([code]) + struct.pack(fmt, raw)
    if isinstance(value, uuid.UUID):
        return bytes([_UUID]) + value.bytes
    if isinstance(value, bytes):
        return bytes([_BYTES]) + struct.pack(">H", len(value)) + value
    if isinstance(value, int):
        return bytes([_INT]) + struct.pack(">i", value)
    data = str(value).encode("utf-8")
    return bytes([_STRING]) + struct.pack(">H", len(data)) + data


def encode_headers(headers: dict) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw = name.encode("utf-8")
        out += bytes([len(raw)]) + raw + _encode_header_value(value)
    return bytes(out)


def encode_message(headers: dict, payload: bytes = b"") -> bytes:
    """One complete frame: prelude, prelude CRC, headers, payload, message CRC."""
    hdr = encode_headers(headers)
    total = 12 + len(hdr) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdr))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + hdr + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_event(event_type: str, payload: dict) -> bytes:
    """A Q `event` frame as the service sends it."""
    return encode_message(
        {":message-type": "event", ":event-type": event_type, ":content-type": "application/json"},
        json.dumps(payload, separators=(",", ":")).encode("utf-8"),
    )


def encode_exception(exception_type: str, message: str, reason: str | None = None) -> bytes:
    """A modeled in-stream error (`:message-type: exception`)."""
    body = {"message": message}
    if reason:
        body["reason"] = reason
    return encode_message(
        {":message-type": "exception", ":exception-type": exception_type,
         ":content-type": "application/json"},
        json.dumps(body).encode("utf-8"),
    )


def encode_error(code: str, message: str) -> bytes:
    """An unmodeled in-stream error (`:message-type: error`)."""
    return encode_message({":message-type": "error", ":error-code": code, ":error-message": message})


def botocore_headers(headers: dict) -> dict:
    """amq's decoded header values in botocore's shapes: timestamps as int ms, uuids as 16 raw
    bytes (for comparing the two decoders)."""
    out = {}
    for name, value in headers.items():
        if isinstance(value, datetime.datetime):
            value = (value - EPOCH) // datetime.timedelta(milliseconds=1)
        elif isinstance(value, uuid.UUID):
            value = value.bytes
        out[name] = value
    return out
