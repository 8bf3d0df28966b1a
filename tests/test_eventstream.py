"""Tests for the event-stream decoder: spec vectors, malformed frames, chunking, botocore parity."""
from __future__ import annotations

import datetime
import random
import struct
import uuid
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer

from amq import eventstream
from amq.eventstream import (
    MAX_HEADERS_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_PAYLOAD_LENGTH,
    ChecksumMismatch,
    DuplicateHeader,
    EventStreamDecoder,
    EventStreamError,
    InvalidHeader,
    InvalidHeadersLength,
    InvalidMessageLength,
    InvalidPayloadLength,
    Message,
    TruncatedStream,
)
from tests.eventstream_encode import (
    botocore_headers,
    encode_error,
    encode_event,
    encode_exception,
    encode_message,
)

UTC = datetime.UTC

# The worked example of docs/event-stream.md, byte for byte.
WORKED_EXAMPLE = bytes.fromhex(
    "0000007c0000005c3bddcf780d3a6d6573736167652d747970650700056576656e740b3a6576656e742d7479"
    "7065070016617373697374616e74526573706f6e73654576656e740d3a636f6e74656e742d74797065070010"
    "6170706c69636174696f6e2f6a736f6e7b22636f6e74656e74223a224869227d09f66f51"
)
WORKED_MESSAGE = Message(
    {
        ":message-type": "event",
        ":event-type": "assistantResponseEvent",
        ":content-type": "application/json",
    },
    b'{"content":"Hi"}',
)
# docs/event-stream.md, "Worked example", more vectors: no headers, no payload.
EMPTY_MESSAGE = bytes.fromhex("000000100000000005c248eb7d98c8ff")

SOME_UUID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _prelude(total: int, headers_length: int) -> bytes:
    """A prelude with a correct CRC, so only its lengths can be wrong."""
    head = struct.pack(">II", total, headers_length)
    return head + struct.pack(">I", zlib.crc32(head))


def _raw_frame(headers: bytes, payload: bytes = b"") -> bytes:
    """A frame around hand-made header bytes, with correct CRCs.

    The encoder only writes valid headers, so malformed ones are built here.
    """
    body = _prelude(16 + len(headers) + len(payload), len(headers)) + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _decode_all(data: bytes) -> list[Message]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    decoder.finish()
    return messages


# (encoded, decoded) vectors, as in botocore's tests/unit/test_eventstream.py.
POSITIVE_CASES = [
    (WORKED_EXAMPLE, WORKED_MESSAGE),
    (EMPTY_MESSAGE, Message({}, b"")),
    (encode_message({"t": True}), Message({"t": True}, b"")),
    (encode_message({"f": False}), Message({"f": False}, b"")),
    (encode_message({"b": (2, -128)}), Message({"b": -128}, b"")),
    (encode_message({"s": (3, -32768)}), Message({"s": -32768}, b"")),
    (encode_message({"i": (4, -(2**31))}), Message({"i": -(2**31)}, b"")),
    (encode_message({"l": (5, 2**63 - 1)}), Message({"l": 2**63 - 1}, b"")),
    (encode_message({"ba": b"\x00\xff\x7f"}), Message({"ba": b"\x00\xff\x7f"}, b"")),
    (encode_message({"str": "héllo ✓"}), Message({"str": "héllo ✓"}, b"")),
    (
        encode_message({"ts": (8, 1_700_000_000_123)}),
        Message({"ts": datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)}, b""),
    ),
    (
        encode_message({"ts": (8, -1)}),
        Message({"ts": datetime.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)}, b""),
    ),
    (encode_message({"id": SOME_UUID}), Message({"id": SOME_UUID}, b"")),
    (
        encode_message(
            {
                "t": True, "f": False, "b": (2, 127), "s": (3, 32767), "i": (4, 7), "l": (5, -5),
                "ba": b"raw", "str": "text", "ts": (8, 0), "id": SOME_UUID,
            },
            b"payload",
        ),
        Message(
            {
                "t": True, "f": False, "b": 127, "s": 32767, "i": 7, "l": -5, "ba": b"raw",
                "str": "text", "ts": datetime.datetime(1970, 1, 1, tzinfo=UTC), "id": SOME_UUID,
            },
            b"payload",
        ),
    ),
    (encode_message({"n" * 255: "long name"}), Message({"n" * 255: "long name"}, b"")),
    (encode_message({}, b"\x00" * 70_000), Message({}, b"\x00" * 70_000)),
    (
        encode_error("InternalError", "boom"),
        Message({":message-type": "error", ":error-code": "InternalError",
                 ":error-message": "boom"}, b""),
    ),
]
POSITIVE_IDS = [
    "worked_example", "empty_message", "bool_true", "bool_false", "byte_min", "short_min",
    "int_min", "long_max", "byte_array", "utf8_string", "timestamp_ms", "timestamp_pre_epoch",
    "uuid", "all_ten_types", "name_255_bytes", "payload_70k", "error_frame",
]

# (encoded, exception class, text the message must contain)
NEGATIVE_CASES = [
    (
        _flip(WORKED_EXAMPLE, 110),
        ChecksumMismatch,
        "message checksum mismatch: expected 0x09f66f51, calculated 0xe634046f",
    ),
    (
        _flip(WORKED_EXAMPLE, 7),
        ChecksumMismatch,
        "prelude checksum mismatch: expected 0x3bddcf78, calculated 0x4cdaffee",
    ),
    (_flip(WORKED_EXAMPLE, 123), ChecksumMismatch, "message checksum mismatch"),
    (_flip(WORKED_EXAMPLE, 20), ChecksumMismatch, "message checksum mismatch"),
    # Size limits are judged from the prelude alone: none of these frames has a body.
    (_prelude(16 + MAX_HEADERS_LENGTH + 1, MAX_HEADERS_LENGTH + 1), InvalidHeadersLength, "131073"),
    (_prelude(16 + MAX_PAYLOAD_LENGTH + 1, 0), InvalidPayloadLength, "25165825"),
    (_prelude(MAX_MESSAGE_LENGTH + 1, 0), InvalidMessageLength, str(MAX_MESSAGE_LENGTH + 1)),
    (_prelude(15, 0), InvalidMessageLength, "invalid message length 15"),
    (_prelude(0, 0), InvalidMessageLength, "invalid message length 0"),
    (_prelude(20, 8), InvalidMessageLength, "headers length 8"),
    # Malformed headers, each followed by payload bytes a sloppy parser could read into.
    (_raw_frame(b"\x05ab", b"payload"), InvalidHeader, "runs past the headers section"),
    (_raw_frame(b"\x03abc", b"payload"), InvalidHeader, "runs past the headers section"),
    (_raw_frame(b"\x01a\x07\x00\x10ab", b"payload..."), InvalidHeader, "runs past the headers"),
    (_raw_frame(b"\x01a\x06\x00", b"payload"), InvalidHeader, "runs past the headers section"),
    (_raw_frame(b"\x01a\x04\x00\x00", b"payload"), InvalidHeader, "runs past the headers section"),
    (_raw_frame(b"\x01a\x08\x00\x00\x00\x00", b"payload"), InvalidHeader, "runs past"),
    (_raw_frame(b"\x01a\x09" + b"\x00" * 15, b"payload........."), InvalidHeader, "runs past"),
    (_raw_frame(b"\x01a\x0a\x00\x00"), InvalidHeader, "unknown type code 10"),
    (_raw_frame(b"\x01a\xff"), InvalidHeader, "unknown type code 255"),
    (_raw_frame(b"\x01a\x00\x01a\x01"), DuplicateHeader, 'duplicate header present: "a"'),
    (_raw_frame(b"\x02\xc3\x28\x00"), InvalidHeader, "not valid UTF-8"),
    (_raw_frame(b"\x01a\x07\x00\x02\xff\xfe"), InvalidHeader, "not valid UTF-8"),
    (_raw_frame(b"\x01a\x08" + struct.pack(">q", 2**62)), InvalidHeader, "out-of-range timestamp"),
]
NEGATIVE_IDS = [
    "payload_byte_flipped", "prelude_byte_flipped", "message_crc_flipped", "header_byte_flipped",
    "headers_too_long", "payload_too_long", "message_too_long", "total_below_16", "total_zero",
    "headers_longer_than_frame", "name_past_section", "type_byte_past_section",
    "string_past_section", "bytes_length_past_section", "int_past_section",
    "timestamp_past_section", "uuid_past_section", "unknown_type_10", "unknown_type_255",
    "duplicate_header", "bad_utf8_name", "bad_utf8_value", "timestamp_out_of_range",
]


@pytest.mark.parametrize("encoded, expected", POSITIVE_CASES, ids=POSITIVE_IDS)
def test_decodes_vector(encoded, expected):
    assert _decode_all(encoded) == [expected]


@pytest.mark.parametrize("encoded, expected", POSITIVE_CASES, ids=POSITIVE_IDS)
def test_decodes_vector_one_byte_at_a_time(encoded, expected):
    decoder = EventStreamDecoder()
    emitted = [(i, m) for i in range(len(encoded)) for m in decoder.feed(encoded[i:i + 1])]
    decoder.finish()
    assert emitted == [(len(encoded) - 1, expected)]


@pytest.mark.parametrize("encoded, error, text", NEGATIVE_CASES, ids=NEGATIVE_IDS)
def test_rejects_vector(encoded, error, text):
    decoder = EventStreamDecoder()
    with pytest.raises(error) as excinfo:
        decoder.feed(encoded)
    assert text in str(excinfo.value)
    assert isinstance(excinfo.value, EventStreamError)


@pytest.mark.parametrize("encoded, error, text", NEGATIVE_CASES, ids=NEGATIVE_IDS)
def test_decoder_stays_dead_after_error(encoded, error, text):
    decoder = EventStreamDecoder()
    with pytest.raises(error):
        decoder.feed(encoded)
    with pytest.raises(error):  # a valid frame does not revive it
        decoder.feed(WORKED_EXAMPLE)
    with pytest.raises(error):
        decoder.finish()


def test_worked_example_headers_in_order():
    [message] = _decode_all(WORKED_EXAMPLE)
    headers, payload = message
    assert list(headers) == [":message-type", ":event-type", ":content-type"]
    assert payload == b'{"content":"Hi"}' and type(payload) is bytes


def test_timestamp_is_aware_utc_datetime():
    [message] = _decode_all(encode_message({"ts": (8, 1_500)}))
    value = message.headers["ts"]
    assert isinstance(value, datetime.datetime) and value.utcoffset() == datetime.timedelta(0)
    assert value == datetime.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)


def test_two_frames_in_one_chunk():
    assert _decode_all(WORKED_EXAMPLE + EMPTY_MESSAGE) == [WORKED_MESSAGE, Message({}, b"")]
    assert _decode_all(WORKED_EXAMPLE * 2) == [WORKED_MESSAGE, WORKED_MESSAGE]


def test_partial_message():
    """A frame split mid-header decodes only once its last byte arrives."""
    decoder = EventStreamDecoder()
    assert decoder.feed(WORKED_EXAMPLE[:30]) == []
    assert decoder.feed(WORKED_EXAMPLE[30:-1]) == []
    assert decoder.feed(WORKED_EXAMPLE[-1:] + EMPTY_MESSAGE[:5]) == [WORKED_MESSAGE]
    assert decoder.feed(EMPTY_MESSAGE[5:]) == [Message({}, b"")]
    decoder.finish()


def test_prelude_is_checked_before_the_body_arrives():
    """A bad prelude fails on its 12th byte rather than after waiting for its length."""
    decoder = EventStreamDecoder()
    bad = _flip(WORKED_EXAMPLE, 7)
    assert decoder.feed(bad[:11]) == []
    with pytest.raises(ChecksumMismatch):
        decoder.feed(bad[11:12])


@pytest.mark.parametrize(
    "prelude",
    [_prelude(16 + MAX_HEADERS_LENGTH, MAX_HEADERS_LENGTH), _prelude(16 + MAX_PAYLOAD_LENGTH, 0),
     _prelude(MAX_MESSAGE_LENGTH, MAX_HEADERS_LENGTH)],
    ids=["headers_at_limit", "payload_at_limit", "message_at_limit"],
)
def test_lengths_at_the_limit_are_accepted(prelude):
    decoder = EventStreamDecoder()
    assert decoder.feed(prelude) == []  # waits for the body instead of raising
    with pytest.raises(TruncatedStream):
        decoder.finish()


def test_good_messages_before_an_error_are_returned_first():
    decoder = EventStreamDecoder()
    assert decoder.feed(WORKED_EXAMPLE + _flip(WORKED_EXAMPLE, 110)) == [WORKED_MESSAGE]
    with pytest.raises(ChecksumMismatch, match="0xe634046f"):
        decoder.feed(b"")
    with pytest.raises(ChecksumMismatch):
        decoder.finish()


def test_error_is_kept_for_finish():
    decoder = EventStreamDecoder()
    assert decoder.feed(EMPTY_MESSAGE + _prelude(15, 0)) == [Message({}, b"")]
    with pytest.raises(InvalidMessageLength):
        decoder.finish()


@pytest.mark.parametrize(
    "cut", [1, 11, 12, 50, len(WORKED_EXAMPLE) - 1], ids=lambda n: f"{n}_bytes"
)
def test_finish_inside_a_frame_raises(cut):
    decoder = EventStreamDecoder()
    assert decoder.feed(EMPTY_MESSAGE + WORKED_EXAMPLE[:cut]) == [Message({}, b"")]
    with pytest.raises(TruncatedStream, match=f"stream ended inside a frame: {cut} bytes buffered"):
        decoder.finish()
    with pytest.raises(TruncatedStream):
        decoder.feed(WORKED_EXAMPLE[cut:])


@pytest.mark.parametrize(
    "data", [b"", EMPTY_MESSAGE, WORKED_EXAMPLE * 3], ids=["nothing", "one", "three"]
)
def test_finish_on_a_frame_boundary(data):
    decoder = EventStreamDecoder()
    decoder.feed(data)
    decoder.finish()


def test_headers_are_not_shared_between_messages():
    first, second = _decode_all(WORKED_EXAMPLE * 2)
    first.headers[":event-type"] = "changed"
    assert second.headers == WORKED_MESSAGE.headers
    assert _decode_all(WORKED_EXAMPLE) == [WORKED_MESSAGE]


def test_header_cache_stays_bounded():
    """Frames whose headers never repeat (say, a per-frame id) must not grow memory."""
    frames = b"".join(encode_message({"id": uuid.UUID(int=n)}) for n in range(200))
    decoder = EventStreamDecoder()
    assert [m.headers["id"].int for m in decoder.feed(frames)] == list(range(200))
    assert decoder.cached_header_sections <= eventstream.HEADER_CACHE_SIZE < 200


def test_large_frame_in_small_chunks():
    frame = encode_event("assistantResponseEvent", {"content": "x" * 300_000})
    decoder = EventStreamDecoder()
    out = [m for i in range(0, len(frame), 1000) for m in decoder.feed(frame[i:i + 1000])]
    decoder.finish()
    assert len(out) == 1 and out[0].payload == frame[-4 - len(out[0].payload):-4]
    assert out[0].payload.endswith(b'xxx"}')


# --- parity with botocore's EventStreamBuffer on a long, randomly split stream ---------------

def _many_frames(rng: random.Random) -> list[bytes]:
    """A Q-like answer: mostly text events, with every header type and odd frames mixed in."""
    frames = [encode_event("initial-response", {})]
    for n in range(900):
        roll = rng.random()
        if roll < 0.85:
            text = "".join(rng.choice("abc xyz ✓é\"\\\n") for _ in range(rng.randint(0, 200)))
            frames.append(encode_event("assistantResponseEvent", {"content": text}))
        elif roll < 0.90:
            frames.append(encode_event("toolUseEvent", {"toolUseId": f"t{n}", "input": "{" * n}))
        elif roll < 0.95:  # a header section never seen before, past the decoder's cache size
            frames.append(encode_message(
                {"n": (4, n), "t": True, "f": False, "b": (2, -n % 128), "s": (3, -n),
                 "l": (5, n * 10**12), "ba": bytes([n % 256]) * 3, "str": f"v{n}",
                 "ts": (8, n * 1_000_003), "id": uuid.UUID(int=n)},
                rng.randbytes(rng.randint(0, 300)),
            ))
        elif roll < 0.97:
            frames.append(EMPTY_MESSAGE)
        elif roll < 0.99:
            frames.append(encode_message({}, rng.randbytes(rng.randint(5_000, 40_000))))
        else:
            frames.append(encode_exception("ThrottlingException", "slow down", reason="RATE"))
    return frames


def _split(rng: random.Random, data: bytes, low: int, high: int) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(low, high)
        chunks.append(data[i:i + n])
        i += n
    return chunks


@pytest.mark.parametrize(
    "seed, low, high",
    [(1, 1, 1), (2, 1, 40), (3, 100, 400), (4, 1024, 4096), (5, 1, 70_000), (6, 200_000, 400_000)],
    ids=["1_byte", "1_to_40", "100_to_400", "1k_to_4k", "1_to_70k", "whole_stream"],
)
def test_random_splits_match_botocore(seed, low, high):
    rng = random.Random(seed)
    frames = _many_frames(rng)
    stream = b"".join(frames)
    assert len(stream) > 3 * eventstream._COMPACT_AT  # so the buffer gets compacted mid-stream
    chunks = _split(rng, stream, low, high)

    ours, theirs = [], []
    decoder, reference = EventStreamDecoder(), EventStreamBuffer()
    for chunk in chunks:
        ours += [(botocore_headers(m.headers), m.payload) for m in decoder.feed(chunk)]
        reference.add_data(chunk)
        theirs += [(m.headers, m.payload) for m in reference]
    decoder.finish()

    assert len(ours) == len(frames)
    assert ours == theirs
