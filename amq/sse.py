"""Formats Anthropic stream events as Server-Sent Events."""
from __future__ import annotations

from .errors import ProxyError
from .jsonio import dumps_wire

# Line and paragraph separators and NEL, which orjson writes as they are: valid in JSON and in
# SSE, but a client that splits decoded text with str.splitlines() would cut the data line.
_UNICODE_BREAKS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def format_event(event: dict) -> bytes:
    """One SSE event; the `event:` line is mandatory (SDKs drop data-only events).

    Written in UTF-8 by orjson (as Anthropic's API writes it; a few times faster than the
    stdlib, and every frame of every stream passes here), see `dumps_wire`.
    """
    data = dumps_wire(event)
    if b"\xe2\x80" in data or b"\xc2\x85" in data:  # only then can a break be there
        for raw, escaped in _UNICODE_BREAKS:
            data = data.replace(raw, escaped)
    return b"event: " + event["type"].encode("ascii") + b"\ndata: " + data + b"\n\n"


def error_event(error: ProxyError, request_id: str | None = None) -> bytes:
    """The `error` event that ends a stream which has begun: the same body a JSON error
    response carries (`ProxyError.to_dict`), request id included. No message_stop follows it."""
    return format_event(error.to_dict(request_id))
