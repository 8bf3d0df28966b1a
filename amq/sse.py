"""Formats Anthropic stream events as Server-Sent Events."""
from __future__ import annotations

import json

from .errors import ProxyError


def format_event(event: dict) -> bytes:
    """One SSE event; the `event:` line is mandatory (SDKs drop data-only events)."""
    # ASCII escapes keep any string writable, lone surrogates from a client or from Q included.
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode("ascii")


def error_event(error: ProxyError, request_id: str | None = None) -> bytes:
    """The `error` event that ends a stream which has begun: the same body a JSON error
    response carries (`ProxyError.to_dict`), request id included. No message_stop follows it."""
    return format_event(error.to_dict(request_id))
