"""The one validation step every Messages endpoint takes (/v1/messages and count_tokens).

Top-level fields are checked here; content blocks are checked by the converter as it reads
them, so the two cannot disagree about what a block may hold. What comes out is a request
amq can serve: the fields the proxy acts on and the converted body, still without a model id.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .convert import Conversion, convert_request
from .errors import InvalidRequest


@dataclass(frozen=True)
class MessageRequest:
    """A Messages request that passed validation."""

    payload: dict
    model: str
    max_tokens: int | None
    stream: bool
    thinking: bool
    conversion: Conversion
    stop_sequences: list[str] = field(default_factory=list)


def validate_request(payload: dict, *, origin: str) -> MessageRequest:
    """Check `payload` as Anthropic's API would, and convert it for Q (`origin` goes with each
    message).

    :raises InvalidRequest: naming the first offending field.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = payload.get("model", "")
    if not isinstance(model, str):
        raise InvalidRequest("model: must be a string")
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise InvalidRequest("max_tokens: must be a positive integer")
    if "stream" in payload and not isinstance(payload["stream"], bool):
        raise InvalidRequest("stream: must be a boolean")
    stop_sequences = payload.get("stop_sequences") or []
    if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
        raise InvalidRequest("stop_sequences: must be a list of strings")
    thinking = payload.get("thinking")
    return MessageRequest(
        payload=payload, model=model, max_tokens=max_tokens, stream=payload.get("stream") is True,
        thinking=isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
        conversion=convert_request(payload, origin=origin), stop_sequences=stop_sequences)
