"""Formats Anthropic stream events as Server-Sent Events."""
from __future__ import annotations

import json

import orjson

from .errors import ProxyError


def format_event(event: dict) -> bytes:
    """One SSE event; the `event:` line is mandatory (SDKs drop data-only events).

    orjson writes it (UTF-8, as Anthropic's API does; a few times faster than the stdlib,
    and every frame of every stream passes here). A string orjson refuses, a lone surrogate
    from a client or from Q, is written with ASCII escapes by the stdlib instead, so any
    string stays writable.
    """
    try:
        data = orjson.dumps(event)
    except TypeError:
        data = json.dumps(event, separators=(",", ":")).encode("ascii")
    return b"event: " + event["type"].encode("ascii") + b"\ndata: " + data + b"\n\n"


def error_event(error: ProxyError, request_id: str | None = None) -> bytes:
    """The `error` event that ends a stream which has begun: the same body a JSON error
    response carries (`ProxyError.to_dict`), request id included. No message_stop follows it."""
    return format_event(error.to_dict(request_id))
