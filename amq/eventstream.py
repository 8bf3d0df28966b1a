"""Decodes AWS event-stream frames (`application/vnd.amazon.eventstream`) from a byte stream."""
from __future__ import annotations

import datetime
import logging
import struct
import uuid
import zlib
from typing import NamedTuple

logger = logging.getLogger(__name__)

# Byte length of the prelude: total_length, headers_length, prelude_crc (docs/event-stream.md, "Frame layout").
# The size caps are botocore's (docs/event-stream.md, "Size limits").
PRELUDE_LENGTH = 12
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
# The prelude and the trailing message CRC add 16 bytes to headers and payload.
MAX_MESSAGE_LENGTH = MAX_HEADERS_LENGTH + MAX_PAYLOAD_LENGTH + PRELUDE_LENGTH + 4

# Consumed bytes are dropped from the buffer only once this many pile up, not per frame.
_COMPACT_AT = 64 * 1024
# Distinct header sections remembered per decoder; Q uses a handful.
HEADER_CACHE_SIZE = 32

# Precompiled structs: unpack_from reads in place and skips parsing the format each time.
_PRELUDE = struct.Struct(">III")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
# Fixed-size integer header types (docs/event-stream.md, "Headers"): code -> unpacker. Timestamps (8) are int64 ms.
_FIXED_INTS = {code: struct.Struct(fmt) for code, fmt in
               ((2, ">b"), (3, ">h"), (4, ">i"), (5, ">q"), (8, ">q"))}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class EventStreamError(Exception):
    """Base for every decode failure; the stream cannot be trusted past one."""


class ChecksumMismatch(EventStreamError):
    """A prelude or message CRC did not match the bytes it covers."""

    def __init__(self, part: str, expected: int, calculated: int) -> None:
        super().__init__(
            f"{part} checksum mismatch: expected 0x{expected:08x}, calculated 0x{calculated:08x}"
        )
        self.part, self.expected, self.calculated = part, expected, calculated


class InvalidMessageLength(EventStreamError):
    """The prelude's lengths cannot describe a legal frame."""

    def __init__(self, total_length: int, headers_length: int) -> None:
        super().__init__(
            f"invalid message length {total_length} with headers length {headers_length} "
            f"(a frame is 16 to {MAX_MESSAGE_LENGTH} bytes and holds its headers)"
        )


class InvalidHeadersLength(EventStreamError):
    """The headers section is larger than MAX_HEADERS_LENGTH."""

    def __init__(self, length: int) -> None:
        super().__init__(f"headers length of {length} exceeds the maximum of {MAX_HEADERS_LENGTH}")


class InvalidPayloadLength(EventStreamError):
    """The payload is larger than MAX_PAYLOAD_LENGTH."""

    def __init__(self, length: int) -> None:
        super().__init__(f"payload length of {length} exceeds the maximum of {MAX_PAYLOAD_LENGTH}")


class InvalidHeader(EventStreamError):
    """A header is malformed: unknown type, overrun of its section or bad UTF-8."""


class DuplicateHeader(InvalidHeader):
    """A header name appears twice in one message."""

    def __init__(self, name: str) -> None:
        super().__init__(f'duplicate header present: "{name}"')


class TruncatedStream(EventStreamError):
    """The body ended part-way through a frame."""

    def __init__(self, buffered: int) -> None:
        super().__init__(f"stream ended inside a frame: {buffered} bytes buffered")


class Message(NamedTuple):
    """One decoded frame; header values are already converted to Python types."""

    headers: dict[str, object]
    payload: bytes


def _check_prelude(data: bytes, pos: int, prelude: tuple[int, int, int]) -> None:
    """Reject a prelude before its lengths are used to wait for, or slice, any bytes."""
    total, hlen, crc = prelude
    calculated = zlib.crc32(data[pos:pos + 8])  # unsigned on Python 3: no & 0xFFFFFFFF
    if calculated != crc:
        raise ChecksumMismatch("prelude", crc, calculated)
    if total < 16 or total > MAX_MESSAGE_LENGTH:
        raise InvalidMessageLength(total, hlen)
    if hlen > MAX_HEADERS_LENGTH:
        raise InvalidHeadersLength(hlen)
    if hlen > total - 16:
        raise InvalidMessageLength(total, hlen)
    if total - hlen - 16 > MAX_PAYLOAD_LENGTH:
        raise InvalidPayloadLength(total - hlen - 16)


def _parse_headers(section: bytes) -> dict[str, object]:
    """Decode a whole headers section, refusing any header that runs past its end.

    `section` holds exactly the headers, so a read past it fails (IndexError or
    struct.error) instead of wandering into the payload; slices are checked by hand.
    """
    headers: dict[str, object] = {}
    end = len(section)
    i = start = 0
    try:
        while i < end:
            start = i
            name_end = i + 1 + section[i]
            name = section[i + 1:name_end].decode("utf-8")
            kind = section[name_end]
            i = name_end + 1
            if kind == 7 or kind == 6:  # strings are nearly every header Q sends: test them first
                value_end = i + 2 + _U16.unpack_from(section, i)[0]
                if value_end > end:
                    raise _overrun(start)
                raw = section[i + 2:value_end]
                value: object = raw.decode("utf-8") if kind == 7 else raw
                i = value_end
            elif kind in _FIXED_INTS:
                unpacker = _FIXED_INTS[kind]
                value = unpacker.unpack_from(section, i)[0]
                i += unpacker.size
                if kind == 8:  # milliseconds since the epoch
                    value = _EPOCH + datetime.timedelta(milliseconds=value)
            elif kind == 0 or kind == 1:
                value = kind == 0
            elif kind == 9:
                if i + 16 > end:
                    raise _overrun(start)
                value = uuid.UUID(bytes=section[i:i + 16])
                i += 16
            else:
                raise InvalidHeader(f"header {name!r} has unknown type code {kind}")
            if name in headers:
                raise DuplicateHeader(name)
            headers[name] = value
    except (IndexError, struct.error):
        raise _overrun(start) from None
    except UnicodeDecodeError as exc:
        raise InvalidHeader(f"header at offset {start} is not valid UTF-8: {exc}") from None
    except OverflowError:  # a timestamp beyond datetime's years 1..9999
        raise InvalidHeader(f"header at offset {start} has an out-of-range timestamp") from None
    return headers


def _overrun(offset: int) -> InvalidHeader:
    """One wording for every header that does not fit its section."""
    return InvalidHeader(f"header at offset {offset} runs past the headers section")


class EventStreamDecoder:
    """Incremental decoder: feed it body chunks of any size, get whole messages back.

    It does no I/O. The first malformed frame kills it: the Smithy specification says a stream
    with a bad frame must be dropped (docs/event-stream.md, "Decoding a stream"), so it never tries to
    resynchronise.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # read offset of the first undecoded byte in _buf
        self._prelude: tuple[int, int, int] | None = None  # validated prelude at _pos, if cached
        self._error: EventStreamError | None = None
        # Q repeats the same few header sections (one per event type) in every frame,
        # so a parsed section is kept and copied instead of decoded again.
        self._header_cache: dict[bytes, dict[str, object]] = {}

    @property
    def cached_header_sections(self) -> int:
        """How many distinct header sections are kept for reuse (at most HEADER_CACHE_SIZE)."""
        return len(self._header_cache)

    def feed(self, data: bytes) -> list[Message]:
        """Append `data` and return every message it completes, in stream order.

        If a bad frame follows good ones in the same chunk, the good ones are returned
        and the error is raised by the next feed() or finish(), as botocore's iterator
        yields good messages before raising.

        :raises EventStreamError: for a malformed frame, or if the decoder is already dead.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        buf = self._buf
        buf += data
        size = len(buf)
        pos = self._pos
        prelude = self._prelude
        messages: list[Message] = []
        if size - pos < (prelude[0] if prelude else PRELUDE_LENGTH):
            return messages  # still waiting: no copy of a large partial frame per chunk
        # One bytes snapshot per call: slicing bytes is cheaper than memoryview slices.
        with memoryview(buf) as mv:
            pending = bytes(mv[pos:])  # via a view: one copy, not two
        avail = len(pending)
        p = 0
        append = messages.append  # locals: looked up once, used per frame
        cache = self._header_cache
        try:
            while True:
                if prelude is None:
                    if avail - p < PRELUDE_LENGTH:
                        break
                    prelude = _PRELUDE.unpack_from(pending, p)
                    _check_prelude(pending, p, prelude)
                total, hlen, prelude_crc = prelude
                end = p + total
                if end > avail:
                    break
                # Seeding with the prelude CRC equals the CRC of bytes 0..total-4.
                calculated = zlib.crc32(pending[p + 8:end - 4], prelude_crc)
                expected = _U32.unpack_from(pending, end - 4)[0]
                if calculated != expected:
                    raise ChecksumMismatch("message", expected, calculated)
                headers_end = p + PRELUDE_LENGTH + hlen
                section = pending[p + PRELUDE_LENGTH:headers_end]
                headers = cache.get(section)
                if headers is None:
                    headers = _parse_headers(section)
                    if len(cache) < HEADER_CACHE_SIZE:
                        cache[section] = headers
                # A copy, so a caller editing one message's headers cannot touch the cache.
                append(Message(headers.copy(), pending[headers_end:end - 4]))
                p = end
                prelude = None
        except EventStreamError as exc:
            self._error = exc
            logger.debug("event-stream decoder stopped: %s", exc)
            if not messages:
                raise
        self._prelude = prelude
        pos += p
        if pos == size:
            buf.clear()
            pos = 0
        elif pos >= _COMPACT_AT:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return messages

    def finish(self) -> None:
        """Declare the end of the body; a partial frame left over means it was cut short.

        :raises TruncatedStream: if bytes of an unfinished frame remain buffered.
        :raises EventStreamError: the earlier error again, if the decoder is dead.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        buffered = len(self._buf) - self._pos
        if buffered:
            self._error = TruncatedStream(buffered)
            raise self._error
