"""Folds a translated event sequence into one Message, for non-streaming responses."""
from __future__ import annotations

import json
from typing import Iterable

from .errors import UpstreamFailure


def collect_message(events: Iterable[dict]) -> dict:
    """The Message that the given stream events describe (what an SDK accumulator builds).

    :raises UpstreamFailure: when a tool's input does not parse as JSON.
    """
    message: dict = {}
    partial_json: dict[int, str] = {}
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = dict(event["message"], content=[], usage=dict(event["message"]["usage"]))
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial_json[event["index"]] = partial_json.get(event["index"], "") + delta["partial_json"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
        elif kind == "content_block_stop" and event["index"] in partial_json:
            raw = partial_json.pop(event["index"])
            try:
                message["content"][event["index"]]["input"] = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise UpstreamFailure("Amazon Q sent tool input that is not valid JSON") from None
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message
