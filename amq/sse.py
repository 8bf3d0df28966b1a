"""Formats Anthropic stream events as Server-Sent Events."""
from __future__ import annotations

import json


def format_event(event: dict) -> bytes:
    """One SSE event; the `event:` line is mandatory (SDKs drop data-only events)."""
    # ASCII escapes keep any string writable, lone surrogates from a client or from Q included.
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode("ascii")
