"""Property-based tests of the event-stream decoder, with botocore's EventStreamBuffer as reference.

Random frames (all ten header types, random payloads), random chunk splits and random corruption
(bit flips, truncation, garbage, forged preludes and header sections with correct CRCs) go to
both decoders, which must agree message for message and error for error. Where they may not
agree, the test names the reason:

- amq reports leftover bytes at `finish()`; botocore has no end of stream and just stops.
- amq returns the good messages of a chunk and raises at the next `feed()`/`finish()`;
  botocore's iterator yields them and raises in the same loop.
- botocore does not check a prelude's lengths against each other (total < 16, headers longer
  than the frame) and reads header fields past the headers section; amq rejects both
  (docs/event-stream.md, "Frame layout").
- botocore returns timestamps as int milliseconds and uuids as 16 raw bytes.
"""
from __future__ import annotations

import datetime
import random
import struct
import uuid
import zlib
from dataclasses import dataclass, field

import botocore.eventstream as boto
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from amq import eventstream
from amq.eventstream import (
    MAX_HEADERS_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_PAYLOAD_LENGTH,
    ChecksumMismatch,
    EventStreamDecoder,
    EventStreamError,
    InvalidHeader,
    InvalidHeadersLength,
    InvalidMessageLength,
    InvalidPayloadLength,
    TruncatedStream,
)
from tests.eventstream_encode import EPOCH, botocore_headers, encode_headers, encode_message

UTC = datetime.UTC
MIN_MS = (datetime.datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // datetime.timedelta(milliseconds=1)
MAX_MS = (datetime.datetime.max.replace(tzinfo=UTC) - EPOCH) // datetime.timedelta(milliseconds=1)
I64 = (-(2**63), 2**63 - 1)

# Modest example counts: the whole file runs in well under 30 s. derandomize (and no example
# database) makes every CI run explore exactly the same inputs.
PROPERTIES = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.large_base_example])


# --------------------------------------------------------------------------- strategies

header_names = st.one_of(st.text(max_size=12), st.just("n" * 255), st.just("é" * 127),
                         st.sampled_from([":message-type", ":event-type", ":content-type"]))

# (value handed to the encoder, value amq must decode) for each of the ten header types.
header_values = st.one_of(
    st.booleans().map(lambda b: (b, b)),                                              # 0, 1
    st.integers(-128, 127).map(lambda i: ((2, i), i)),                                 # byte
    st.integers(-(2**15), 2**15 - 1).map(lambda i: ((3, i), i)),                       # short
    st.integers(-(2**31), 2**31 - 1).map(lambda i: ((4, i), i)),                       # int
    st.integers(*I64).map(lambda i: ((5, i), i)),                                      # long
    st.binary(max_size=40).map(lambda b: (b, b)),                                      # bytes
    st.text(max_size=40).map(lambda s: (s, s)),                                        # string
    st.integers(MIN_MS, MAX_MS).map(                                                   # timestamp
        lambda ms: ((8, ms), EPOCH + datetime.timedelta(milliseconds=ms))),
    st.uuids().map(lambda u: (u, u)),                                                  # uuid
)


@st.composite
def frames(draw):
    """(encoded frame, expected headers, payload); a few payloads cross the 64 KiB compaction."""
    pairs = draw(st.dictionaries(header_names, header_values, max_size=6))
    payload = draw(st.one_of(
        st.binary(max_size=120),
        st.integers(60_000, 100_000).map(lambda n: random.Random(n).randbytes(n)),
    ))
    encoded = encode_message({k: v[0] for k, v in pairs.items()}, payload)
    return encoded, {k: v[1] for k, v in pairs.items()}, payload


def frame_lists(min_size: int = 0):
    """Up to 6 frames; doubled lists repeat header sections, which amq parses once and caches."""
    return st.tuples(st.lists(frames(), min_size=min_size, max_size=6), st.booleans()).map(
        lambda t: t[0] * 2 if t[1] else t[0])


@st.composite
def splits(draw, data: bytes) -> list[bytes]:
    """Chunks of `data` at random cuts; repeated cuts give empty chunks, as a socket may."""
    if data and draw(st.integers(0, 9)) == 0 and len(data) <= 3000:
        return [data[i:i + 1] for i in range(len(data))]  # byte by byte
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=25)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def prelude(total: int, headers_length: int) -> bytes:
    """A prelude with a correct CRC, so only its lengths can be wrong."""
    head = struct.pack(">II", total, headers_length)
    return head + struct.pack(">I", zlib.crc32(head))


def raw_frame(headers: bytes, payload: bytes = b"") -> bytes:
    """A frame around arbitrary header bytes, with both CRCs correct."""
    body = prelude(16 + len(headers) + len(payload), len(headers)) + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


U32 = 2**32 - 1
absurd_lengths = st.one_of(
    st.sampled_from([0, 1, 4, 11, 12, 13, 15, 16, 17, 100, MAX_HEADERS_LENGTH,
                     MAX_HEADERS_LENGTH + 1, MAX_HEADERS_LENGTH + 16, MAX_PAYLOAD_LENGTH + 16,
                     MAX_PAYLOAD_LENGTH + 17, MAX_MESSAGE_LENGTH, MAX_MESSAGE_LENGTH + 1,
                     2**31, U32]),
    st.integers(0, U32),
)
# (total, headers length) pairs: independent, or consistent but with a payload over the limit.
forged_lengths = st.one_of(
    st.tuples(absurd_lengths, absurd_lengths),
    st.tuples(st.integers(0, MAX_HEADERS_LENGTH),
              st.sampled_from([MAX_PAYLOAD_LENGTH + 1, MAX_PAYLOAD_LENGTH + 2, 2**31])).map(
        lambda t: (min(t[0] + t[1] + 16, U32), t[0])),
)


# --------------------------------------------------------------------------- running both

@dataclass
class Outcome:
    steps: list = field(default_factory=list)  # per feed(): the normalised messages it gave
    raw: list = field(default_factory=list)     # amq only: (_typed headers, payload)
    error_at: int | None = None                 # feed index; len(chunks) means finish()
    error: BaseException | None = None
    leftover: int = 0                           # botocore only: bytes it holds at the end

    @property
    def messages(self) -> list:
        return [m for step in self.steps for m in step]


def run_amq(chunks: list[bytes]) -> Outcome:
    out, decoder = Outcome(), EventStreamDecoder()
    for i, chunk in enumerate(chunks):
        try:
            got = decoder.feed(chunk)
        except EventStreamError as exc:  # anything else is a bug and fails the test
            out.steps.append([])
            out.error_at, out.error = i, exc
            return out
        out.steps.append([(botocore_headers(m.headers), m.payload) for m in got])
        for message in got:
            out.raw.append((_typed(message.headers), message.payload))
            # A caller may edit its messages: that must not reach later ones (header cache).
            message.headers["caller's own"] = True
    try:
        decoder.finish()
    except EventStreamError as exc:
        out.error_at, out.error = len(chunks), exc
    return out


def run_botocore(chunks: list[bytes]) -> Outcome:
    """botocore raises ParserError subclasses, and plain struct/Key/Unicode errors for headers
    it cannot read: every exception counts as the reference rejecting the stream."""
    out, buffer, fed, consumed = Outcome(), boto.EventStreamBuffer(), 0, 0
    for i, chunk in enumerate(chunks):
        buffer.add_data(chunk)
        fed += len(chunk)
        got = []
        try:
            for message in buffer:
                consumed += message.prelude.total_length
                got.append((message.headers, message.payload))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            out.steps.append(got)
            out.error_at, out.error = i, exc
            return out
        out.steps.append(got)
    out.leftover = fed - consumed
    return out


def _same_kind(ours: EventStreamError, theirs: BaseException) -> bool:
    """amq's error class for the error botocore found (amq checks lengths in another order)."""
    if isinstance(theirs, boto.ChecksumMismatch):
        return isinstance(ours, ChecksumMismatch)
    if isinstance(theirs, (boto.InvalidHeadersLength, boto.InvalidPayloadLength)):
        return isinstance(ours, (InvalidHeadersLength, InvalidPayloadLength, InvalidMessageLength))
    # A duplicate name botocore sees may sit in a header amq already found to overrun.
    return isinstance(ours, (InvalidHeader, InvalidMessageLength))


def lax_offset(stream: bytes) -> tuple[int, int] | None:
    """(offset, good frames before it) of the first prelude botocore accepts and amq may not.

    Walks the frames as both decoders do; None if every frame up to the first error (or the
    end) is one both judge alike.
    """
    p = good = 0
    while len(stream) - p >= 12:
        total, hlen, crc = struct.unpack_from(">III", stream, p)
        if zlib.crc32(stream[p:p + 8]) != crc:
            return None  # both: prelude checksum
        if hlen > MAX_HEADERS_LENGTH or total - hlen - 16 > MAX_PAYLOAD_LENGTH:
            return None  # both: a length limit
        if total < 16 or hlen > total - 16:
            return p, good  # amq: InvalidMessageLength; botocore reads on
        if len(stream) - p < total:
            return None  # both wait for the rest
        if zlib.crc32(stream[p + 8:p + total - 4], crc) != struct.unpack_from(">I", stream, p + total - 4)[0]:
            return None  # both: message checksum
        p += total
        good += 1
    return None


def _step_of(chunks: list[bytes], offset: int) -> int:
    """Index of the chunk after which the stream holds at least `offset` bytes."""
    seen = 0
    for i, chunk in enumerate(chunks):
        seen += len(chunk)
        if seen >= offset:
            return i
    raise AssertionError("offset beyond the stream")


def assert_agree(chunks: list[bytes]) -> tuple[Outcome, Outcome]:
    """The central property: amq and botocore agree, up to the documented differences."""
    ours, theirs = run_amq(chunks), run_botocore(chunks)
    stream = b"".join(chunks)
    lax = lax_offset(stream)
    event("lax prelude" if lax else "botocore error" if theirs.error else
          "botocore leftover" if theirs.leftover else "clean")
    if len(stream) > eventstream._COMPACT_AT:
        event("stream long enough for compaction")
    if lax is not None:
        # A prelude whose lengths contradict each other: amq must stop there, right after its
        # 12 bytes arrive, having returned exactly the frames before it (as botocore did).
        offset, good = lax
        assert isinstance(ours.error, InvalidMessageLength), ours.error
        assert len(ours.messages) == good
        assert ours.messages == theirs.messages[:good]
        step = _step_of(chunks, offset + 12)
        assert ours.error_at == (step + 1 if ours.steps[step] else step)
        return ours, theirs
    if theirs.error is None:
        assert ours.steps == theirs.steps
        if theirs.leftover:
            assert ours.error_at == len(chunks), "leftover bytes must fail at finish(), not before"
            assert isinstance(ours.error, TruncatedStream)
        else:
            assert ours.error is None, ours.error
        return ours, theirs
    k = theirs.error_at
    assert ours.steps[:k + 1] == theirs.steps[:k + 1]
    # Good messages before the error come first; amq raises at the following call then.
    assert ours.error_at == (k + 1 if theirs.steps[k] else k), (ours.error_at, k)
    assert _same_kind(ours.error, theirs.error), (ours.error, theirs.error)
    return ours, theirs


def spec_headers(section: bytes) -> dict | None:
    """A deliberately plain reading of docs/event-stream.md, "Headers": the headers, or None if the section is
    malformed in any way (overrun, unknown type, bad UTF-8, duplicate, timestamp that is no date)."""
    headers, i, end = {}, 0, len(section)
    sizes = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}
    while i < end:
        name_end = i + 1 + section[i]
        if name_end + 1 > end:
            return None
        try:
            name = section[i + 1:name_end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        kind, i = section[name_end], name_end + 1
        if kind in (0, 1):
            value = kind == 0
        elif kind in sizes:
            size = struct.calcsize(sizes[kind])
            if i + size > end:
                return None
            value = struct.unpack(sizes[kind], section[i:i + size])[0]
            i += size
            if kind == 8:
                if not MIN_MS <= value <= MAX_MS:
                    return None
                value = EPOCH + datetime.timedelta(milliseconds=value)
        elif kind in (6, 7):
            if i + 2 > end:
                return None
            length = struct.unpack(">H", section[i:i + 2])[0]
            if i + 2 + length > end:
                return None
            value = section[i + 2:i + 2 + length]
            if kind == 7:
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    return None
            i += 2 + length
        elif kind == 9:
            if i + 16 > end:
                return None
            value, i = uuid.UUID(bytes=section[i:i + 16]), i + 16
        else:
            return None
        if name in headers:
            return None
        headers[name] = value
    return headers


def _typed(headers: dict) -> list:
    """Headers in order, with their Python types: True must not pass for a byte 1."""
    return [(name, type(value), value) for name, value in headers.items()]


# --------------------------------------------------------------------------- properties

@PROPERTIES
@given(st.data(), frame_lists())
def test_valid_streams_decode_alike_however_split(data, fs):
    stream = b"".join(f[0] for f in fs)
    chunks = data.draw(splits(stream))
    ours, theirs = assert_agree(chunks)
    assert ours.error is None and theirs.error is None and theirs.leftover == 0
    # Against the generator as well, with amq's own value types (datetime, UUID, bool, int).
    assert ours.raw == [(_typed(h), p) for _, h, p in fs]


@PROPERTIES
@given(st.data(), frame_lists(min_size=1))
def test_bit_flips_are_caught_by_both(data, fs):
    stream = bytearray(b"".join(f[0] for f in fs))
    # Up to 3 flipped bits: CRC-32 is certain to see them in a frame of this size.
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(stream) - 1), st.integers(0, 7)),
                               min_size=1, max_size=3, unique_by=lambda f: f))
    for index, bit in flips:
        stream[index] ^= 1 << bit
    assume(bytes(stream) != b"".join(f[0] for f in fs))  # two flips of one bit cancel out
    ours, theirs = assert_agree(data.draw(splits(bytes(stream))))
    assert isinstance(ours.error, ChecksumMismatch)
    assert isinstance(theirs.error, boto.ChecksumMismatch)
    first = min(index for index, _ in flips)
    assert len(ours.messages) == sum(1 for end in _frame_ends(fs) if end <= first)


def _frame_ends(fs) -> list[int]:
    ends, total = [], 0
    for f in fs:
        total += len(f[0])
        ends.append(total)
    return ends


@PROPERTIES
@given(st.data(), frame_lists(min_size=1))
def test_truncation_fails_at_finish_only(data, fs):
    stream = b"".join(f[0] for f in fs)
    cut = data.draw(st.integers(0, len(stream) - 1))
    ours, theirs = assert_agree(data.draw(splits(stream[:cut])))
    ends = _frame_ends(fs)
    assert len(ours.messages) == sum(1 for end in ends if end <= cut)
    assert theirs.error is None
    if cut in (0, *ends):
        assert ours.error is None
    else:
        assert isinstance(ours.error, TruncatedStream) and theirs.leftover == cut - max(
            [0, *(end for end in ends if end <= cut)])


@PROPERTIES
@given(st.data(), frame_lists(), st.binary(min_size=1, max_size=64))
@example(data=None, fs=[], garbage=b"\x00" * 12)  # zeros: a prelude whose CRC is wrong
def test_garbage_after_good_frames(data, fs, garbage):
    stream = b"".join(f[0] for f in fs) + garbage
    chunks = data.draw(splits(stream)) if data is not None else [stream]
    ours, theirs = assert_agree(chunks)
    assert ours.error is not None  # garbage is never a clean end of stream
    assert ours.raw == [(_typed(h), p) for _, h, p in fs]


@PROPERTIES
@given(st.data(), frame_lists(), forged_lengths, st.binary(max_size=48))
@example(data=None, before=[], lengths=(12, 0), after=b"")   # botocore: a 12-byte "frame"
@example(data=None, before=[], lengths=(0, 0), after=b"")    # botocore: struct.error
@example(data=None, before=[], lengths=(20, 8), after=b"\x00" * 8)
@example(data=None, before=[], lengths=(MAX_MESSAGE_LENGTH + 1, 0), after=b"")
@example(data=None, before=[], lengths=(MAX_PAYLOAD_LENGTH + 17, 0), after=b"")
@example(data=None, before=[], lengths=(16 + MAX_HEADERS_LENGTH + 1, MAX_HEADERS_LENGTH + 1), after=b"")
def test_forged_preludes_with_correct_crcs(data, before, lengths, after):
    total, hlen = lengths
    good = b"".join(f[0] for f in before)
    forged = prelude(total, hlen)
    stream = good + forged + after
    chunks = data.draw(splits(stream)) if data is not None else [stream]
    ours, theirs = assert_agree(chunks)
    consistent = 16 <= total <= MAX_MESSAGE_LENGTH and hlen <= total - 16 \
        and hlen <= MAX_HEADERS_LENGTH and total - hlen - 16 <= MAX_PAYLOAD_LENGTH
    if consistent:  # a legal prelude: the frame is merely unfinished, or its CRC is wrong
        assert isinstance(ours.error, (TruncatedStream, ChecksumMismatch))
    else:  # judged from the prelude alone, without waiting for the body it announces
        # (assert_agree checked that it is raised as soon as the 12 prelude bytes are in)
        assert isinstance(ours.error, (InvalidMessageLength, InvalidHeadersLength, InvalidPayloadLength))
    assert len(ours.messages) == len(before)


header_bytes = st.one_of(
    st.binary(max_size=48),
    # Mostly-plausible sections: real headers with their last bytes cut or a byte changed.
    st.tuples(st.dictionaries(header_names, header_values, min_size=1, max_size=4),
              st.integers(0, 8), st.integers(0, 255)).map(
        lambda t: _damaged_section(*t)),
)


def _damaged_section(pairs: dict, cut: int, byte: int) -> bytes:
    raw = bytearray(encode_headers({k: v[0] for k, v in pairs.items()}))
    if cut and cut < len(raw):
        del raw[-cut:]
    else:
        raw[byte % len(raw)] = byte
    return bytes(raw)


@PROPERTIES
@given(st.data(), header_bytes, st.binary(max_size=24))
@example(data=None, section=b"\x01a\x07\x00\x10ab", payload=b"payload...")   # string past section
@example(data=None, section=b"\x01a\x09" + b"\x00" * 15, payload=b"p" * 16)    # short uuid
@example(data=None, section=b"\x01a\x0a", payload=b"")                          # type 10
@example(data=None, section=b"\x01a\x00\x01a\x01", payload=b"")                 # duplicate
@example(data=None, section=b"\x02\xc3\x28\x00", payload=b"")                   # bad UTF-8 name
def test_forged_header_sections_with_correct_crcs(data, section, payload):
    """botocore reads header fields past the section's end; amq refuses them. So: whatever
    botocore rejects amq rejects, whatever amq accepts botocore reads the same way, and amq
    accepts exactly what a plain reading of the header format accepts."""
    frame = raw_frame(section, payload)
    chunks = data.draw(splits(frame)) if data is not None else [frame]
    ours, theirs = run_amq(chunks), run_botocore(chunks)
    expected = spec_headers(section)
    event("amq accepts" if ours.error is None else "both reject" if theirs.error else
          "only amq rejects")
    assert (ours.error is None) == (expected is not None), (ours.error, expected)
    if expected is not None:
        assert ours.raw == [(_typed(expected), payload)]
    if theirs.error is not None:
        assert ours.error is not None and _same_kind(ours.error, theirs.error), (ours.error, theirs.error)
        assert ours.error_at == theirs.error_at
    if ours.error is None:
        assert ours.steps == theirs.steps and theirs.error is None
    else:
        assert isinstance(ours.error, InvalidHeader) and ours.messages == []
        assert ours.error_at == _step_of(chunks, len(frame))  # as soon as the frame is whole


@PROPERTIES
@given(st.one_of(st.integers(I64[0], MIN_MS - 1), st.integers(MAX_MS + 1, I64[1])))
def test_timestamps_beyond_datetime_are_rejected(ms):
    """botocore returns any int64 as a number; amq's timestamps are datetimes, so the years
    outside 1..9999 are an InvalidHeader rather than a crash or a wrong date."""
    frame = encode_message({"ts": (8, ms)}, b"x")
    ours, theirs = run_amq([frame]), run_botocore([frame])
    assert theirs.error is None and theirs.messages == [({"ts": ms}, b"x")]
    assert isinstance(ours.error, InvalidHeader) and "out-of-range timestamp" in str(ours.error)


@PROPERTIES
@given(frame_lists(min_size=2), st.data())
def test_decoder_stays_dead_after_an_error(fs, data):
    """After the first error every later feed() and finish() raises it again (no resync)."""
    stream = bytearray(b"".join(f[0] for f in fs))
    stream[data.draw(st.integers(0, len(fs[0][0]) - 1))] ^= 0x80  # inside the first frame
    decoder = EventStreamDecoder()
    errors = 0
    for chunk in data.draw(splits(bytes(stream))) + [b"", bytes(fs[1][0])]:
        try:
            assert decoder.feed(chunk) == []
        except EventStreamError:
            errors += 1
    assert errors >= 2
    try:
        decoder.finish()
    except ChecksumMismatch:
        return
    raise AssertionError("finish() after an error must raise it again")

