"""Formats Anthropic stream events as Server-Sent Events."""
from __future__ import annotations

import json


def format_event(event: dict) -> bytes:
    """One SSE event; the `event:` line is mandatory (SDKs drop data-only events)."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode("utf-8")
