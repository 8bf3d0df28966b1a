"""Folds a translated event sequence into one Message, for non-streaming responses."""
from __future__ import annotations

import json
from collections.abc import Iterable

from .errors import UpstreamFailure

# Which block field each delta type extends.
_DELTA_FIELDS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking"),
                 "input_json_delta": ("partial_json", "input")}


def collect_message(events: Iterable[dict]) -> dict:
    """The Message that the given stream events describe (what an SDK accumulator builds).

    :raises UpstreamFailure: when a tool's input does not parse as JSON.
    """
    message: dict = {}
    pieces: dict[int, list[str]] = {}  # joined at the block's stop: += would be quadratic
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = dict(event["message"], content=[], usage=dict(event["message"]["usage"]))
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
            pieces[event["index"]] = []
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "signature_delta":
                message["content"][event["index"]]["signature"] = delta["signature"]
            elif delta["type"] in _DELTA_FIELDS:
                pieces[event["index"]].append(delta[_DELTA_FIELDS[delta["type"]][0]])
        elif kind == "content_block_stop":
            _finish_block(message["content"][event["index"]], pieces.pop(event["index"], []))
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


def _finish_block(block: dict, pieces: list[str]) -> None:
    joined = "".join(pieces)
    if block["type"] == "tool_use":
        try:
            block["input"] = json.loads(joined) if joined.strip() else {}
        except ValueError:
            raise UpstreamFailure("Amazon Q sent tool input that is not valid JSON") from None
    elif block["type"] in ("text", "thinking"):
        block[block["type"]] += joined
